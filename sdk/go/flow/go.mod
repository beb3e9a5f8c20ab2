module github.com/flowd-project/flowd/sdk/go/flow

go 1.24
