module baton.example/batondrain

go 1.19
