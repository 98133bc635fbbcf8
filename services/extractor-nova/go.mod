module github.com/tally-accounting/tally/services/extractor-nova

go 1.26.0

require (
	github.com/google/go-cmp v0.7.0
	github.com/tally-accounting/tally/pkg v0.0.0
	google.golang.org/protobuf v1.36.12
)

require (
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260928230214-8a89bd6388cc // indirect
	google.golang.org/grpc v1.85.0 // indirect
)

replace github.com/tally-accounting/tally/pkg => ../../pkg
