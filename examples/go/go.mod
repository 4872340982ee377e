module baton.example/server

go 1.19

require baton.example/batondrain v0.0.0

// batondrain is not published: a module that uses it names where it lies.
replace baton.example/batondrain => ./batondrain
