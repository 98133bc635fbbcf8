// Package telemetry sets up OpenTelemetry tracing and carries trace context
// across NATS messages.
//
// Export is configured only by the standard OTel environment variables: with
// OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) set,
// spans go to that collector over OTLP/gRPC; otherwise spans are still
// created, so trace ids propagate through the pipeline, but nothing is
// exported. OTEL_SDK_DISABLED=true and OTEL_TRACES_EXPORTER=none turn export
// off.
package telemetry

import (
	"context"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// Telemetry bundles what instrumented code needs. It is passed explicitly,
// never taken from OTel's globals.
type Telemetry struct {
	TracerProvider trace.TracerProvider
	Propagator     propagation.TextMapPropagator
	shutdown       func(context.Context) error
}

// Tracer returns a tracer for the named instrumentation scope.
func (t *Telemetry) Tracer(name string) trace.Tracer { return t.TracerProvider.Tracer(name) }

// Shutdown flushes and stops the exporter, if any.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if t.shutdown == nil {
		return nil
	}
	return t.shutdown(ctx)
}

// Propagator is W3C trace context plus baggage, on the wire everywhere.
func Propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// ExportEnabled reports whether the environment asks for span export.
func ExportEnabled(getenv func(string) string) bool {
	if strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") {
		return false
	}
	if strings.EqualFold(getenv("OTEL_TRACES_EXPORTER"), "none") {
		return false
	}
	return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// Setup builds tracing for serviceName from the environment.
func Setup(ctx context.Context, serviceName, version string) (*Telemetry, error) {
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		semconv.ServiceName(serviceName), semconv.ServiceVersion(version)))
	if err != nil {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}
	var opts []sdktrace.TracerProviderOption
	if ExportEnabled(os.Getenv) {
		// The exporter reads the endpoint, headers, TLS and timeout from the
		// standard OTEL_EXPORTER_OTLP_* variables itself.
		exp, err := otlptracegrpc.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("otlp trace exporter: %w", err)
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	return WithSpanProcessors(res, opts...), nil
}

// WithSpanProcessors builds Telemetry on a tracer provider with the given
// options; tests pass an in-memory exporter this way.
func WithSpanProcessors(res *resource.Resource, opts ...sdktrace.TracerProviderOption) *Telemetry {
	if res != nil {
		opts = append([]sdktrace.TracerProviderOption{sdktrace.WithResource(res)}, opts...)
	}
	tp := sdktrace.NewTracerProvider(opts...)
	return &Telemetry{TracerProvider: tp, Propagator: Propagator(), shutdown: tp.Shutdown}
}

// HeaderCarrier adapts NATS message headers (a map[string][]string) for
// propagation; keys are used as given, so both ends must use this carrier.
type HeaderCarrier map[string][]string

// Get implements propagation.TextMapCarrier.
func (c HeaderCarrier) Get(key string) string {
	if v := c[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Set implements propagation.TextMapCarrier.
func (c HeaderCarrier) Set(key, value string) { c[key] = []string{value} }

// Keys implements propagation.TextMapCarrier.
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
