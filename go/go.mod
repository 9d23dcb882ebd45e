module github.com/libautostandby/libautostandby/go

go 1.26
