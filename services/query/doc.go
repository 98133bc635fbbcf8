// Package query is the record store and the RecordQuery gRPC API.
package query
