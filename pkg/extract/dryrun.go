package extract

import (
	"bufio"
	"bytes"
	"context"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// DryRunRecords runs r as a dry run and returns the records it would have
// published, parsed back from the JSON lines a dry run prints.
func DryRunRecords(ctx context.Context, r *Runner, opts Options) ([]*tallyv1.Record, Summary, error) {
	var out bytes.Buffer
	opts.DryRun, opts.DryRunOut = true, &out
	sum, err := r.Run(ctx, opts)
	if err != nil {
		return nil, sum, err
	}
	var recs []*tallyv1.Record
	sc := bufio.NewScanner(&out)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var rec tallyv1.Record
		if err := protojson.Unmarshal(sc.Bytes(), &rec); err != nil {
			return nil, sum, fmt.Errorf("dry-run line %q: %w", sc.Text(), err)
		}
		recs = append(recs, &rec)
	}
	return recs, sum, sc.Err()
}
