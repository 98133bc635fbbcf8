package query

import (
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// Watch limits.
const (
	// WatchBuffer is how many records a watcher may fall behind before it
	// is dropped: writes never wait for a watcher.
	WatchBuffer = 4096
	// MaxWatchers bounds concurrent WatchRecords streams.
	MaxWatchers = 256
)

// hub fans written records out to watchers.
type hub struct {
	mu       sync.Mutex
	watchers map[*watcher]struct{}
	closed   chan struct{}
	isClosed bool
	buffer   int
}

type watcher struct {
	filter  *tallyv1.RecordFilter
	ch      chan *tallyv1.Record
	dropped chan struct{}
}

func newHub(buffer int) *hub {
	return &hub{watchers: map[*watcher]struct{}{}, closed: make(chan struct{}), buffer: buffer}
}

func (h *hub) subscribe(f *tallyv1.RecordFilter) (*watcher, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.isClosed {
		return nil, status.Error(codes.Unavailable, "the query service is stopping")
	}
	if len(h.watchers) >= MaxWatchers {
		return nil, status.Errorf(codes.ResourceExhausted, "already %d watchers", MaxWatchers)
	}
	w := &watcher{filter: f, ch: make(chan *tallyv1.Record, h.buffer), dropped: make(chan struct{})}
	h.watchers[w] = struct{}{}
	return w, nil
}

func (h *hub) unsubscribe(w *watcher) {
	h.mu.Lock()
	delete(h.watchers, w)
	h.mu.Unlock()
}

// publish hands records to every watcher whose filter they match, without
// blocking: a watcher whose buffer is full is dropped.
func (h *hub) publish(recs []*tallyv1.Record, as []attrs) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for w := range h.watchers {
		for i, r := range recs {
			if !as[i].matches(w.filter) {
				continue
			}
			select {
			case w.ch <- r:
				continue
			default:
			}
			close(w.dropped)
			delete(h.watchers, w)
			break
		}
	}
}

// active reports whether anyone watches, so writers skip the work for
// nobody.
func (h *hub) active() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.watchers) > 0
}

// close ends every watch.
func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.isClosed {
		h.isClosed = true
		close(h.closed)
	}
}
