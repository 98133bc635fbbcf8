package bus

import (
	"strings"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/record"
)

// The subject scheme, in one place. Every token after the fixed prefix is
// passed through Token, so a region or event name can never add a level or a
// wildcard.
//
//	tally.records.raw.<region>.<type>        extractors → enricher (RecordBatch)
//	tally.records.enriched.<region>.<type>   enricher → any other consumer (RecordBatch)
//	tally.deadletter.<stage>                 what a stage could not process, with the reason
//	tally.notifications.<service>.<event>    notify-bridge → verifier (raw oslo.messaging body)
const (
	RecordsStream       = "TALLY_RECORDS"
	DeadLetterStream    = "TALLY_DEADLETTER"
	NotificationsStream = "TALLY_NOTIFICATIONS"

	RawAll           = "tally.records.raw.>"
	EnrichedAll      = "tally.records.enriched.>"
	DeadLetterAll    = "tally.deadletter.>"
	NotificationsAll = "tally.notifications.>"
)

// Header names set on messages besides Nats-Msg-Id and the trace context.
const (
	HeaderReason          = "Tally-Reason"
	HeaderOriginalSubject = "Tally-Original-Subject"
	HeaderStage           = "Tally-Stage"
	// HeaderBatchID repeats the batch id on every message about a batch
	// (raw, enriched, dead letters), so a tracker needs no decoding.
	HeaderBatchID = "Tally-Batch-Id"
	// HeaderRecordIndex marks a dead letter of one record of a batch.
	HeaderRecordIndex = "Tally-Record-Index"
	// HeaderHeldProjects lists, on an enriched batch some of whose records
	// were dead-lettered, the projects those records belong to.
	HeaderHeldProjects = "Tally-Held-Projects"
)

// RawSubject is where extractors publish batches of one record type.
func RawSubject(region string, t tallyv1.RecordType) string {
	return "tally.records.raw." + Token(region) + "." + record.TypeName(t)
}

// EnrichedSubject is where the enricher publishes delivered batches.
func EnrichedSubject(region string, t tallyv1.RecordType) string {
	return "tally.records.enriched." + Token(region) + "." + record.TypeName(t)
}

// EnrichedFromRaw maps a raw subject to its enriched twin.
func EnrichedFromRaw(raw string) string {
	return "tally.records.enriched." + strings.TrimPrefix(raw, "tally.records.raw.")
}

// DeadLetterSubject is where stage puts what it cannot process.
func DeadLetterSubject(stage string) string { return "tally.deadletter." + Token(stage) }

// NotificationSubject is where an OpenStack notification is republished.
func NotificationSubject(service, eventType string) string {
	return "tally.notifications." + Token(service) + "." + eventType
}

// Token makes s safe as one subject token: dots, wildcards and white space
// become underscores, and an empty string becomes "_".
func Token(s string) string {
	if s == "" {
		return "_"
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '.', '*', '>', ' ', '\t', '\r', '\n':
			return '_'
		}
		return r
	}, s)
}
