package bridge

import (
	"fmt"
	"net/url"
	"time"

	"github.com/tally-accounting/tally/pkg/config"
)

// Config configures notify-bridge. Key names follow StackTach's worker
// config (stacktach_worker_config.json) where one exists.
type Config struct {
	RabbitHost        string        `yaml:"rabbit_host"`
	RabbitPort        int           `yaml:"rabbit_port"`
	RabbitUserID      string        `yaml:"rabbit_userid"`
	RabbitPassword    config.Secret `yaml:"rabbit_password"`
	RabbitVirtualHost string        `yaml:"rabbit_virtual_host"`
	// DurableQueue declares the queues durable (they survive a broker
	// restart). Queues are never auto-deleted either way: a queue that
	// vanished with the bridge's connection would lose what arrives during
	// the outage.
	DurableQueue bool `yaml:"durable_queue"`
	// DurableExchanges must match how the exchanges were declared:
	// oslo.messaging declares them non-durable unless amqp_durable_queues
	// is set, and redeclaring with another durability is refused.
	DurableExchanges bool `yaml:"durable_exchanges"`
	// Prefetch bounds the unacked deliveries in flight per queue: the
	// publishes to JetStream waiting for their acks at once.
	Prefetch int `yaml:"prefetch"`
	// Workers parse and publish a queue's deliveries concurrently; order
	// does not matter to the verifier (acks to RabbitMQ stay in order).
	Workers int `yaml:"workers"`
	// ReconnectDelay is the first wait after a lost connection; it doubles
	// up to ten times that.
	ReconnectDelay time.Duration `yaml:"reconnect_delay"`
	// Topics maps an exchange to the queues bound to it, like StackTach's
	// "topics": {"nova": [{"queue", "routing_key"}]}.
	Topics map[string][]Binding `yaml:"topics"`
}

// Binding is one queue bound to its exchange with a routing key.
type Binding struct {
	Queue      string `yaml:"queue"`
	RoutingKey string `yaml:"routing_key"`
	// Service is the subject token (tally.notifications.<service>.<event>);
	// empty means the exchange name.
	Service string `yaml:"service"`
}

// DefaultConfig listens to Nova's legacy and versioned notifications and
// Glance's, on a local broker.
func DefaultConfig() Config {
	return Config{
		RabbitHost: "127.0.0.1", RabbitPort: 5672, RabbitUserID: "guest", RabbitPassword: "guest", RabbitVirtualHost: "/",
		Prefetch: 2048, Workers: 4, ReconnectDelay: time.Second,
		Topics: map[string][]Binding{
			"nova": {
				{Queue: "tally.nova.notifications.info", RoutingKey: "notifications.info"},
				{Queue: "tally.nova.notifications.error", RoutingKey: "notifications.error"},
				{Queue: "tally.nova.versioned_notifications.info", RoutingKey: "versioned_notifications.info"},
				{Queue: "tally.nova.versioned_notifications.error", RoutingKey: "versioned_notifications.error"},
			},
			"glance": {
				{Queue: "tally.glance.notifications.info", RoutingKey: "notifications.info"},
				{Queue: "tally.glance.notifications.error", RoutingKey: "notifications.error"},
			},
		},
	}
}

// Validate implements config.Validator.
func (c Config) Validate() error {
	switch {
	case c.RabbitHost == "":
		return config.Errorf("rabbit_host", "is empty")
	case c.RabbitPort < 1 || c.RabbitPort > 65535:
		return config.Errorf("rabbit_port", "must be between 1 and 65535, got %d", c.RabbitPort)
	case c.Prefetch < 1 || c.Prefetch > 65535:
		return config.Errorf("prefetch", "must be between 1 and 65535, got %d", c.Prefetch)
	case c.Workers < 1 || c.Workers > 256:
		return config.Errorf("workers", "must be between 1 and 256, got %d", c.Workers)
	case c.ReconnectDelay <= 0:
		return config.Errorf("reconnect_delay", "must be positive, got %s", c.ReconnectDelay)
	case len(c.Topics) == 0:
		return config.Errorf("topics", "is empty: the bridge would consume nothing")
	}
	queues := map[string]string{}
	for ex, bs := range c.Topics {
		if ex == "" {
			return config.Errorf("topics", "has an empty exchange name")
		}
		if len(bs) == 0 {
			return config.Errorf("topics."+ex, "has no queue")
		}
		for i, b := range bs {
			key := fmt.Sprintf("topics.%s[%d]", ex, i)
			if b.Queue == "" {
				return config.Errorf(key+".queue", "is empty")
			}
			if b.RoutingKey == "" {
				return config.Errorf(key+".routing_key", "is empty")
			}
			// One queue bound to two exchanges would mix their services.
			if prev, ok := queues[b.Queue]; ok && prev != ex {
				return config.Errorf(key+".queue", "%q is also bound to exchange %q", b.Queue, prev)
			}
			queues[b.Queue] = ex
		}
	}
	return nil
}

// url is the AMQP URL with the password; never log it.
func (c Config) url() string {
	vhost := c.RabbitVirtualHost
	if vhost == "" {
		vhost = "/"
	}
	user := url.UserPassword(c.RabbitUserID, c.RabbitPassword.Reveal())
	return "amqp://" + user.String() + "@" + fmt.Sprintf("%s:%d", c.RabbitHost, c.RabbitPort) + "/" + url.PathEscape(vhost)
}

// redactedURL is url without the password, for logs and errors.
func (c Config) redactedURL() string {
	return config.RedactURL(c.url())
}
