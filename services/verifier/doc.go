// Package verifier is tally's usage verification, StackTach's verifier
// rebuilt (shared/docs/stacktach-verification.md): it tracks every instance
// and image through the lifecycle notifications notify-bridge (package
// bridge) puts on the bus, and checks each periodic exists notification
// against that state once it has settled. Every exists ends verified or
// failed with the field, the expected and the actual value.
//
// On the results: StackTach's usage audit (Audit) and instance hours
// report (InstanceHours), audits kept by `tally audit --store` in a
// ReportStore, and, beyond StackTach, CrossCheck of the usage the verified
// exists prove against the cloud records of the record store. API serves
// them all as the tally.v1.Verification gRPC service.
//
// Configuration (StackTach's key names; the defaults are its sample's):
//
//	verifier:
//	  tick_time: 30            # seconds between passes
//	  settle_time: 5           # verify an exists once its audit period
//	  settle_units: minutes    #   ended this long ago
//	  pool_size: 2             # verification workers
//	  batchsize: 1000          # exists claimed, checked and finished per transaction
//	  workers: 4               # beyond StackTach: batches of bus messages ingested at once
//	  ingest_batch: 500        #   of up to this many, applied in one transaction, then acked
//	  validation_level: basic  # none | basic | all
//	  flavor_field_name: instance_flavor_id   # or instance_type_id
//	  required_image_meta: []  # for all: os_architecture, os_distro, os_version, rax_options
//	  enable_notifications: false
//	  nova_event_type: compute.instance.exists.verified
//	  glance_event_type: image.exists.verified
//	  rabbit: {host: 127.0.0.1, port: 5672, userid: guest, password: guest, virtual_host: /,
//	           topics: {nova: [notifications.info], glance: [notifications.info]}}
//	  store: {driver: sqlite, path: var/verifier.db, cache_mib: 64}
//	  # or, shared by several verifier replicas (schema migrated at start):
//	  # store: {driver: postgres, dsn: "postgres://verifier@db:5432/verifier"}
//	  reconcile: false         # ask Nova about exists the tracked state fails (reconcile.go)
//	  reconciler:
//	    region: RegionOne      # default: client.region_name
//	    client: {auth_url: https://keystone:5000/v3, username: admin, password: ...,
//	             project_name: admin, user_domain_name: Default, project_domain_name: Default}
//	    pool_size: 4           # concurrent calls to Nova
//	    retry: {max_attempts: 3, base_delay: 500ms, max_delay: 5s, request_timeout: 30s}
//
// Where tally differs from StackTach, on purpose:
//
//   - the oslo.messaging v2 envelope and versioned (nova_object) payloads are
//     read, as well as the flat v1 body;
//   - usage is keyed by (instance, launched_at to the second), not by request
//     id, and merged by event time, so the legacy and versioned copies of an
//     event, retries and out-of-order delivery give the same state;
//   - an exists with no launched_at is kept and failed (StackTach dropped it
//     at ingest with a warning), naming the launch it should have carried;
//   - the flavor name (instance_type) is compared as well as the configured
//     flavor field, so a changed flavor is caught whichever id is compared;
//   - deleted_at is terminated_at, else deleted_at, on both the delete and
//     the exists, so the two are compared like with like;
//   - glance validity checks follow validation_level, and a missing delete
//     is a failure with a reason, not an AttributeError;
//   - exists left verifying by a crash are put back to pending at start, for
//     images too (the SQLite store, which has one verifier, never marks
//     them: its claims only read, and a crash leaves them pending); the bus
//     message is acked only once its effect is committed (StackTach acked
//     first);
//   - the reconciler asks Nova's API with admin credentials, not Nova's
//     database through a JSON bridge, and the exists that prompted it
//     verifies when Nova agrees (see reconcile.go).
package verifier
