package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// InvalidArgument is the error of a bad request field; the message starts
// with the field's name, so a client knows what to fix.
func InvalidArgument(field, format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, "%s: %s", field, fmt.Sprintf(format, args...))
}

// Internal hides a server-side error's detail (it may name hosts or paths)
// from the client and logs it once, with msg; a cancelled or expired
// context is reported as such.
func Internal(ctx context.Context, logger *slog.Logger, msg, method string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	logger.ErrorContext(ctx, msg, "method", method, "error", err)
	return status.Errorf(codes.Internal, "%s failed; the server log has the cause", method)
}
