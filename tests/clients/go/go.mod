module baton.test/go-client

go 1.19
