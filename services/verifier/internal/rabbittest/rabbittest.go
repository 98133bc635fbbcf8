// Package rabbittest gives tests a real RabbitMQ (the one CI starts) with
// names unique to the test, deleted afterwards, and a TCP proxy that a test
// can cut to simulate a broker loss.
package rabbittest

import (
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// URL is the broker tests use: $TALLY_TEST_AMQP or the local default.
func URL() string {
	if u := os.Getenv("TALLY_TEST_AMQP"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

// Broker is an admin connection to the test broker.
type Broker struct {
	t    testing.TB
	Conn *amqp.Connection
	Ch   *amqp.Channel
	// Prefix is unique to the test; use it in every exchange and queue name.
	Prefix string
	mu     sync.Mutex
	queues []string
	exs    []string
}

// Connect fails the test, never skips it, when RabbitMQ is unreachable: CI
// starts one, and a skipped bridge test would hide a broken bridge.
func Connect(t testing.TB) *Broker {
	t.Helper()
	// A minute between heartbeats, not amqp.Dial's 10 s: a benchmark
	// publishing a million persistent messages, right after another run
	// left gigabytes to write back, saw the broker send nothing for 30 s
	// (three heartbeats), and the client dropped the connection mid-publish.
	conn, err := amqp.DialConfig(URL(), amqp.Config{Heartbeat: time.Minute})
	if err != nil {
		t.Fatalf("RabbitMQ is required for this test and is not reachable at %s (set TALLY_TEST_AMQP or start it: "+
			"docker run -d -p 5672:5672 rabbitmq:3): %v", redact(URL()), err)
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		t.Fatalf("open channel: %v", err)
	}
	name := strings.NewReplacer("/", "-", " ", "_").Replace(t.Name())
	b := &Broker{t: t, Conn: conn, Ch: ch, Prefix: fmt.Sprintf("tally-test-%s-%d", name, time.Now().UnixNano())}
	t.Cleanup(b.cleanup)
	return b
}

func redact(u string) string {
	if at := strings.LastIndex(u, "@"); at > 0 {
		if p := strings.Index(u, "://"); p > 0 {
			return u[:p+3] + "***@" + u[at+1:]
		}
	}
	return u
}

// Track registers names to delete when the test ends (they may be created
// by the code under test).
func (b *Broker) Track(exchanges, queues []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.exs = append(b.exs, exchanges...)
	b.queues = append(b.queues, queues...)
}

func (b *Broker) cleanup() {
	// A fresh channel: the test may have broken the admin one. A fresh
	// connection if the broker closed this one (a resource alarm during a
	// benchmark's publishing does): a queue left behind would keep its
	// messages, a million in a benchmark's, in the broker's memory.
	conn := b.Conn
	if conn.IsClosed() {
		if c, err := amqp.Dial(URL()); err == nil {
			defer c.Close()
			conn = c
		}
	}
	if ch, err := conn.Channel(); err == nil {
		for _, q := range b.queues {
			_, _ = ch.QueueDelete(q, false, false, false)
		}
		for _, ex := range b.exs {
			_ = ch.ExchangeDelete(ex, false, false)
		}
	}
	b.Conn.Close()
}

// Publish sends body like an OpenStack service does.
func (b *Broker) Publish(exchange, key string, body []byte) {
	b.t.Helper()
	err := b.Ch.Publish(exchange, key, false, false, amqp.Publishing{ContentType: "application/json",
		ContentEncoding: "utf-8", DeliveryMode: amqp.Persistent, Body: body})
	if err != nil {
		b.t.Fatalf("publish to %s/%s: %v", exchange, key, err)
	}
}

// Ready is the number of messages ready in queue (not counting unacked).
func (b *Broker) Ready(queue string) (int, error) {
	ch, err := b.Conn.Channel()
	if err != nil {
		return 0, err
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(queue, false, false, false, false, nil)
	if err != nil {
		return 0, err
	}
	return q.Messages, nil
}

// Proxy forwards TCP connections to the broker until Cut closes them all.
type Proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	wg     sync.WaitGroup
}

// NewProxy listens on a loopback port in front of the broker of URL().
func NewProxy(t testing.TB) *Proxy {
	t.Helper()
	uri, err := amqp.ParseURI(URL())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: fmt.Sprintf("%s:%d", uri.Host, uri.Port)}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

// Port is the proxy's port.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		p.wg.Go(func() { _, _ = io.Copy(up, c); up.Close(); c.Close() })
		p.wg.Go(func() { _, _ = io.Copy(c, up); up.Close(); c.Close() })
	}
}

// Cut closes every proxied connection, as a broker loss would; new
// connections are still accepted.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}
