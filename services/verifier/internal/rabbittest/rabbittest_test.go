package rabbittest

import (
	"errors"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// TestCleanupAfterTheBrokerClosed deletes what a test tracked even when
// its connection is gone, as after a broker's resource alarm.
func TestCleanupAfterTheBrokerClosed(t *testing.T) {
	b := Connect(t)
	q := b.Prefix + ".left"
	if _, err := b.Ch.QueueDeclare(q, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	b.Track(nil, []string{q})
	if err := b.Conn.Close(); err != nil {
		t.Fatal(err)
	}
	b.cleanup()

	conn, err := amqp.Dial(URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	_, err = ch.QueueDeclarePassive(q, false, false, false, false, nil)
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.NotFound {
		_, _ = ch.QueueDelete(q, false, false, false)
		t.Errorf("queue %s after cleanup: %v, want NOT_FOUND", q, err)
	}
}
