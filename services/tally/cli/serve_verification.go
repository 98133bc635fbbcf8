package cli

import (
	"context"
	"log/slog"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/service"
	"github.com/tally-accounting/tally/services/query"
	"github.com/tally-accounting/tally/services/verifier"
)

// verificationAPI registers the Verification service on the public API
// now, since a gRPC server takes no service once it serves, and returns the
// service that attaches it to the verifier's store once the verifier has
// opened it. The cross-check reads the record store of this process, or,
// in a split deployment where the query service runs elsewhere, the one
// query.store names (PostgreSQL there).
func (p *process) verificationAPI(cfg *Config, v *verifier.Verifier, logger *slog.Logger) service.Service {
	api := verifier.NewAPI(logger)
	tallyv1.RegisterVerificationServer(p.api.GRPC, api)
	var own query.Store
	return service.Funcs{
		ServiceName: "verification-api",
		StartFunc: func(ctx context.Context) error {
			reports, err := verifier.OpenReports(ctx, v.Store())
			if err != nil {
				return err
			}
			records := p.queryStore
			if records == nil && cfg.Query.Store != "" {
				if own, err = query.OpenStore(ctx, cfg.Query.Store, cfg.DataDir); err != nil {
					return err
				}
				records = own
			}
			var src verifier.RecordSource
			if records != nil {
				src = recordSource{records}
			} else {
				logger.Warn("no record store in this process and query.store unset: the Verification API's CrossCheck is unavailable",
					"service", verifier.Name)
			}
			api.Attach(v.Store(), reports, src)
			return nil
		},
		StopFunc: func(context.Context) error {
			// Waits for the calls using the stores, which close next.
			api.Detach()
			if own != nil {
				return own.Close()
			}
			return nil
		},
	}
}
