// Package pgtest gives tests a PostgreSQL schema of their own on the real
// server (127.0.0.1:5432, or TALLY_TEST_POSTGRES), dropped afterwards.
// An unreachable server fails the test: a store test must not pass by
// skipping the store it is about.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Base is the server's URL: TALLY_TEST_POSTGRES, else the local one.
func Base() string {
	if v := os.Getenv("TALLY_TEST_POSTGRES"); v != "" {
		return v
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

// Schema creates a schema named prefix + random hex for one test (or
// benchmark) and returns Base confined to it by search_path.
func Schema(tb testing.TB, prefix string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, Base())
	if err != nil {
		tb.Fatalf("PostgreSQL tests need the server at %s (set TALLY_TEST_POSTGRES to use another; "+
			"start the local one with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start): %v", Base(), err)
	}
	defer conn.Close(ctx)
	var b [6]byte
	rand.Read(b[:])
	schema := prefix + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		tb.Fatalf("create schema: %v", err)
	}
	tb.Cleanup(func() { drop(tb, schema) })
	join := "?"
	if strings.Contains(Base(), "?") {
		join = "&"
	}
	return Base() + join + "search_path=" + schema
}

// Drop drops the schema of a URL Schema returned before the test ends: for
// a benchmark that fills one large store after another.
func Drop(tb testing.TB, url string) {
	tb.Helper()
	_, schema, ok := strings.Cut(url, "search_path=")
	if !ok {
		tb.Fatalf("pgtest: %s has no schema of its own", url)
	}
	drop(tb, schema)
}

func drop(tb testing.TB, schema string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, Base())
	if err != nil {
		tb.Errorf("drop schema %s: %v", schema, err)
		return
	}
	defer conn.Close(ctx)
	// IF EXISTS: the cleanup after a Drop.
	if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE"); err != nil {
		tb.Errorf("drop schema %s: %v", schema, err)
	}
}
