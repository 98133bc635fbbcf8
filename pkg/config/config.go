// Package config is the one way tally loads configuration: defaults set in
// code, then a YAML file, then TALLY_* environment variables, then
// command-line flags, validated once at start with errors that name the key.
package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// EnvPrefix starts every environment variable tally reads for its config.
const EnvPrefix = "TALLY_"

// Validator is implemented by config structs; Validate reports the first
// invalid key as a *FieldError.
type Validator interface {
	Validate() error
}

// FieldError names a configuration key and what is wrong with it.
type FieldError struct {
	Key     string
	Problem string
}

func (e *FieldError) Error() string { return "config: " + e.Key + ": " + e.Problem }

// Errorf returns a *FieldError for key.
func Errorf(key, format string, args ...any) error {
	return &FieldError{Key: key, Problem: fmt.Sprintf(format, args...)}
}

// Prefix prepends prefix and a dot to the key of a *FieldError, so nested
// configs can validate themselves without knowing where they sit.
func Prefix(prefix string, err error) error {
	var fe *FieldError
	if errors.As(err, &fe) {
		return &FieldError{Key: prefix + "." + fe.Key, Problem: fe.Problem}
	}
	return err
}

// Layer fills dst, which holds the defaults and to which the flags of fs are
// bound, from the YAML file at path (skipped when empty), then from environ,
// then from the flags set on the command line (fs must be parsed), and
// validates the result. It returns the TALLY_* variables it did not know, so
// the caller can warn about misspellings.
func Layer(dst any, fs *flag.FlagSet, path string, environ []string) (unknownEnv []string, err error) {
	// Flags are bound to dst, so the file would overwrite them: remember what
	// the command line said and set it again last.
	explicit := map[string]string{}
	if fs != nil {
		fs.Visit(func(f *flag.Flag) { explicit[f.Name] = f.Value.String() })
	}
	if path != "" {
		if err := LoadFile(dst, path); err != nil {
			return nil, err
		}
	}
	unknownEnv, err = LoadEnv(dst, environ)
	if err != nil {
		return nil, err
	}
	for name, v := range explicit {
		if err := fs.Lookup(name).Value.Set(v); err != nil {
			return nil, Errorf("--"+name, "%v", err)
		}
	}
	if v, ok := dst.(Validator); ok {
		if err := v.Validate(); err != nil {
			return unknownEnv, err
		}
	}
	return unknownEnv, nil
}

// LoadFile decodes the YAML file at path into dst. Unknown keys are errors:
// a misspelled key would otherwise silently keep its default.
func LoadFile(dst any, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: read %s: %w", path, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(dst); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file keeps the defaults
		}
		return fmt.Errorf("config: %s: %w", path, err)
	}
	return nil
}

// LoadEnv applies TALLY_<KEY> variables to dst, where KEY is the YAML path
// upper-cased with dots and dashes as underscores (nats.url is TALLY_NATS_URL).
// Lists are comma-separated.
func LoadEnv(dst any, environ []string) (unknown []string, err error) {
	fields := map[string]reflect.Value{}
	collect(reflect.ValueOf(dst).Elem(), "", fields)
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		key := strings.TrimPrefix(name, EnvPrefix)
		f, ok := fields[key]
		if !ok {
			unknown = append(unknown, name)
			continue
		}
		if err := setString(f, value); err != nil {
			return nil, Errorf(name, "%v", err)
		}
	}
	slices.Sort(unknown)
	return unknown, nil
}

// EnvNames lists the environment variables that LoadEnv understands for dst.
func EnvNames(dst any) []string {
	fields := map[string]reflect.Value{}
	collect(reflect.ValueOf(dst).Elem(), "", fields)
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, EnvPrefix+k)
	}
	slices.Sort(names)
	return names
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	timeType     = reflect.TypeFor[time.Time]()
)

func collect(v reflect.Value, prefix string, out map[string]reflect.Value) {
	t := v.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if opts == "inline" && sf.Type.Kind() == reflect.Struct {
			// Inlined fields sit at the parent's level, in YAML and here.
			collect(v.Field(i), prefix, out)
			continue
		}
		if name == "" {
			name = strings.ToLower(sf.Name)
		}
		key := strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(name))
		if prefix != "" {
			key = prefix + "_" + key
		}
		fv := v.Field(i)
		switch {
		case fv.Kind() == reflect.Struct && fv.Type() != timeType:
			collect(fv, key, out)
		case isScalar(fv.Type()):
			out[key] = fv
		}
	}
}

func isScalar(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.String, reflect.Bool, reflect.Int, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint32, reflect.Uint64, reflect.Float64:
		return true
	case reflect.Slice:
		return t.Elem().Kind() == reflect.String
	case reflect.Struct:
		return t == timeType
	}
	return false
}

func setString(f reflect.Value, s string) error {
	switch {
	case f.Type() == durationType:
		d, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		f.SetInt(int64(d))
		return nil
	case f.Type() == timeType:
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return err
		}
		f.Set(reflect.ValueOf(t))
		return nil
	}
	switch f.Kind() {
	case reflect.String:
		f.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return err
		}
		f.SetBool(b)
	case reflect.Int, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(s, 10, f.Type().Bits())
		if err != nil {
			return err
		}
		f.SetInt(n)
	case reflect.Uint, reflect.Uint32, reflect.Uint64:
		n, err := strconv.ParseUint(s, 10, f.Type().Bits())
		if err != nil {
			return err
		}
		f.SetUint(n)
	case reflect.Float64:
		n, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return err
		}
		f.SetFloat(n)
	case reflect.Slice:
		list := SplitList(s)
		sv := reflect.MakeSlice(f.Type(), len(list), len(list))
		for i, item := range list {
			sv.Index(i).SetString(item)
		}
		f.Set(sv)
	default:
		return fmt.Errorf("unsupported type %s", f.Type())
	}
	return nil
}

// SplitList splits a comma-separated list, trimming spaces and dropping
// empty items.
func SplitList(s string) []string {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// ListFlag is a flag.Value for a comma-separated list; a later flag on the
// command line replaces, not appends, so a re-applied flag stays the same.
type ListFlag struct{ P *[]string }

func (l ListFlag) String() string {
	if l.P == nil {
		return ""
	}
	return strings.Join(*l.P, ",")
}

// Set implements flag.Value.
func (l ListFlag) Set(s string) error {
	*l.P = SplitList(s)
	return nil
}
