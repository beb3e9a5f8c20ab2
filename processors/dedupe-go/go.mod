module dedupe

go 1.24

require github.com/flowd-project/flowd/sdk/go/flow v0.0.0

replace github.com/flowd-project/flowd/sdk/go/flow => ../../sdk/go/flow
