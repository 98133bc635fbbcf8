package bus

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// PublishBatch publishes a record batch with its batch id as message id.
func (b *Bus) PublishBatch(ctx context.Context, subject string, batch *tallyv1.RecordBatch) (duplicate bool, err error) {
	if batch.GetBatchId() == "" {
		return false, fmt.Errorf("publish to %s: batch has no batch_id", subject)
	}
	data, err := proto.Marshal(batch)
	if err != nil {
		return false, fmt.Errorf("marshal batch %s: %w", batch.GetBatchId(), err)
	}
	return b.Publish(ctx, subject, batch.GetBatchId(), data, nats.Header{HeaderBatchID: []string{batch.GetBatchId()}})
}

// DecodeBatch parses a message as a record batch. A payload that does not
// parse can never be processed, so the error is permanent.
func DecodeBatch(m *Message) (*tallyv1.RecordBatch, error) {
	var batch tallyv1.RecordBatch
	if err := proto.Unmarshal(m.Data, &batch); err != nil {
		return nil, Permanent(fmt.Errorf("message %d on %s is not a RecordBatch: %w", m.Sequence, m.Subject, err))
	}
	if batch.GetBatchId() == "" {
		return nil, Permanent(fmt.Errorf("message %d on %s: batch has no batch_id", m.Sequence, m.Subject))
	}
	return &batch, nil
}
