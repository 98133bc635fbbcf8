package enricher

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// TestPushRequestIsARecordBatch guards encodedPush: the enriched batch's
// bytes are pushed as a PushRequest, so the two messages must keep the
// same fields.
func TestPushRequestIsARecordBatch(t *testing.T) {
	push := (&tallyv1.PushRequest{}).ProtoReflect().Descriptor().Fields()
	batch := (&tallyv1.RecordBatch{}).ProtoReflect().Descriptor().Fields()
	if push.Len() != batch.Len() {
		t.Fatalf("PushRequest has %d fields, RecordBatch %d", push.Len(), batch.Len())
	}
	for i := range push.Len() {
		p, b := push.Get(i), batch.Get(i)
		if p.Number() != b.Number() || p.Kind() != b.Kind() || p.Cardinality() != b.Cardinality() ||
			(p.Kind() == protoreflect.MessageKind && p.Message().FullName() != b.Message().FullName()) {
			t.Errorf("field %s (%d %v) differs from %s (%d %v)", p.Name(), p.Number(), p.Kind(), b.Name(), b.Number(), b.Kind())
		}
	}
	records := []*tallyv1.Record{{Key: "cloud/x", Payload: &tallyv1.Record_Cloud{Cloud: &tallyv1.CloudRecord{VmUuid: "x"}}}}
	data, err := proto.Marshal(&tallyv1.RecordBatch{BatchId: "b", Records: records})
	if err != nil {
		t.Fatal(err)
	}
	var got tallyv1.PushRequest
	if err := proto.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	want := &tallyv1.PushRequest{BatchId: "b", Records: records}
	if !proto.Equal(want, &got) || len(got.ProtoReflect().GetUnknown()) > 0 {
		t.Errorf("decoded %v, want %v", &got, want)
	}
}
