package query

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
	"github.com/tally-accounting/tally/pkg/record"
)

// DefaultAddr is the public gRPC API the CLI calls by default.
const DefaultAddr = "127.0.0.1:50051"

const cliUsage = `Usage: tally query <records|get|summary|watch> [flags]

  records   list records matching the filters (newest first)
  get KEY   print one record
  summary   usage summed over the records matching the filters
  watch     print records as they arrive

Output is a table on a terminal and JSON lines otherwise (or with --json).
Times (--from, --to) are RFC 3339, YYYY-MM-DD or YYYY-MM (UTC).
The token defaults to $TALLY_QUERY_TOKEN, the address to $TALLY_QUERY_ADDR.
`

// Command runs "tally query ..." and returns the exit status.
func Command(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, cliUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	verb := args[0]
	fs := flag.NewFlagSet("query "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", pick(getenv("TALLY_QUERY_ADDR"), DefaultAddr), "RecordQuery gRPC address")
	tok := fs.String("token", "", "bearer token (default $TALLY_QUERY_TOKEN)")
	caFile := fs.String("tls-ca", "", "CA (PEM) to verify the server with; turns TLS on")
	certFile := fs.String("tls-cert", "", "client certificate (PEM) for mutual TLS")
	keyFile := fs.String("tls-key", "", "client key (PEM) for mutual TLS")
	asJSON := fs.Bool("json", false, "JSON lines, also the default when stdout is not a terminal")
	var f filterFlags
	f.register(fs)
	groupBy := fs.String("group-by", "", "summary: comma-separated month, vo, project, user, region, site, cpu_count")
	metricsFlag := fs.String("metrics", "", "summary: comma-separated record_count, wall_hours, cpu_hours, normalised_cpu_hours, gpu_hours, storage_gb_hours, public_ip_count (default all)")
	limit := fs.Int("limit", 0, "records: stop after this many (0: all)")
	pageSize := fs.Int("page-size", 0, "records: page size (server default 100, at most 1000)")
	// Flags may follow the positional argument of get (tally query get
	// KEY --addr ...): parse around it.
	var positional []string
	for rest := args[1:]; ; {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "tally query %s: %s\n", verb, fmt.Sprintf(format, a...))
		return 1
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "tally query %s: %s\n", verb, fmt.Sprintf(format, a...))
		return 2
	}
	if verb != "get" && len(positional) > 0 {
		return usageErr("unexpected argument %q", positional[0])
	}
	filter, err := f.build()
	if err != nil {
		return usageErr("%v", err)
	}
	token := *tok
	if token == "" {
		token = getenv("TALLY_QUERY_TOKEN")
	}
	conn, err := dial(*addr, token, *caFile, *certFile, *keyFile)
	if err != nil {
		return fail("%v", err)
	}
	defer conn.Close()
	client := tallyv1.NewRecordQueryClient(conn)
	out := newPrinter(stdout, *asJSON || !isTerminal(stdout))
	rpcErr := func(err error) int {
		st := status.Convert(err)
		return fail("%s: %s", st.Code(), st.Message())
	}
	switch verb {
	case "get":
		if len(positional) != 1 {
			return usageErr("want one record key")
		}
		resp, err := client.GetRecord(ctx, &tallyv1.GetRecordRequest{Key: positional[0]})
		if err != nil {
			return rpcErr(err)
		}
		out.record(resp.GetRecord())
	case "records":
		req := &tallyv1.ListRecordsRequest{Filter: filter, PageSize: int32(*pageSize)}
		n := 0
		for {
			resp, err := client.ListRecords(ctx, req)
			if err != nil {
				out.flush()
				return rpcErr(err)
			}
			for _, r := range resp.GetRecords() {
				if *limit > 0 && n == *limit {
					break
				}
				out.record(r)
				n++
			}
			if resp.GetNextPageToken() == "" || (*limit > 0 && n >= *limit) {
				break
			}
			req.PageToken = resp.GetNextPageToken()
		}
	case "summary":
		req := &tallyv1.SummarizeUsageRequest{Filter: filter}
		for _, g := range splitList(*groupBy) {
			v, ok := tallyv1.UsageGroupBy_value["USAGE_GROUP_BY_"+strings.ToUpper(g)]
			if !ok || v == 0 {
				return usageErr("--group-by: unknown dimension %q", g)
			}
			req.GroupBy = append(req.GroupBy, tallyv1.UsageGroupBy(v))
		}
		for _, m := range splitList(*metricsFlag) {
			v, ok := tallyv1.UsageMetric_value["USAGE_METRIC_"+strings.ToUpper(m)]
			if !ok || v == 0 {
				return usageErr("--metrics: unknown metric %q", m)
			}
			req.Metrics = append(req.Metrics, tallyv1.UsageMetric(v))
		}
		resp, err := client.SummarizeUsage(ctx, req)
		if err != nil {
			return rpcErr(err)
		}
		out.summary(req.GetGroupBy(), resp.GetGroups())
	case "watch":
		stream, err := client.WatchRecords(ctx, &tallyv1.WatchRecordsRequest{Filter: filter})
		if err != nil {
			return rpcErr(err)
		}
		for {
			resp, err := stream.Recv()
			if err != nil {
				out.flush()
				if ctx.Err() != nil {
					return 0
				}
				return rpcErr(err)
			}
			out.record(resp.GetRecord())
			// A watch is read as it happens: show each record at once.
			out.flush()
		}
	default:
		return usageErr("unknown subcommand %q (records, get, summary, watch)", verb)
	}
	out.flush()
	return 0
}

func dial(addr, token, caFile, certFile, keyFile string) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if caFile != "" || certFile != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if caFile != "" {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return nil, err
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("--tls-ca %s holds no PEM certificate", caFile)
			}
		}
		if certFile != "" {
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return nil, err
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		creds = credentials.NewTLS(tc)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer{token: token, secure: caFile != "" || certFile != ""}))
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	return conn, nil
}

// bearer sends the token with every call.
type bearer struct {
	token  string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity is false so a token works over plaintext to
// a loopback or private address, as the server allows.
func (b bearer) RequireTransportSecurity() bool { return b.secure }

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func splitList(s string) []string {
	var out []string
	for v := range strings.SplitSeq(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// filterFlags are the flags every subcommand filters with.
type filterFlags struct {
	types, regions, sites, projects, vos, users, statuses string
	from, to                                              string
}

func (f *filterFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.types, "type", "", "record types, comma-separated: "+strings.Join(record.Names(), ", "))
	fs.StringVar(&f.regions, "region", "", "regions, comma-separated")
	fs.StringVar(&f.sites, "site", "", "sites, comma-separated")
	fs.StringVar(&f.projects, "project", "", "project ids, comma-separated")
	fs.StringVar(&f.vos, "vo", "", "VOs, comma-separated")
	fs.StringVar(&f.users, "user", "", "user ids or global user names, comma-separated")
	fs.StringVar(&f.statuses, "status", "", "statuses, comma-separated")
	fs.StringVar(&f.from, "from", "", "records ending at or after this time")
	fs.StringVar(&f.to, "to", "", "records starting before this time")
}

func (f *filterFlags) build() (*tallyv1.RecordFilter, error) {
	out := &tallyv1.RecordFilter{
		Regions: splitList(f.regions), Sites: splitList(f.sites), ProjectIds: splitList(f.projects),
		Vos: splitList(f.vos), Users: splitList(f.users), Statuses: splitList(f.statuses),
	}
	for _, t := range splitList(f.types) {
		rt, err := record.ParseType(t)
		if err != nil {
			return nil, fmt.Errorf("--type: %w", err)
		}
		out.Types = append(out.Types, rt)
	}
	var err error
	if out.Start, err = parseTime("--from", f.from); err != nil {
		return nil, err
	}
	if out.End, err = parseTime("--to", f.to); err != nil {
		return nil, err
	}
	return out, nil
}

func parseTime(flagName, s string) (*timestamppb.Timestamp, error) {
	if s == "" {
		return nil, nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02", "2006-01"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return timestamppb.New(t), nil
		}
	}
	return nil, fmt.Errorf("%s: %q is not RFC 3339, YYYY-MM-DD or YYYY-MM", flagName, s)
}

// printer writes records and summaries as a table or JSON lines.
type printer struct {
	w      io.Writer
	json   bool
	tw     *tabwriter.Writer
	header bool
}

func newPrinter(w io.Writer, asJSON bool) *printer {
	p := &printer{w: w, json: asJSON}
	if !asJSON {
		p.tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	}
	return p
}

func (p *printer) jsonLine(m proto.Message) {
	b, err := protojson.MarshalOptions{}.Marshal(m)
	if err != nil {
		fmt.Fprintf(p.w, "{\"error\": %q}\n", err.Error())
		return
	}
	// protojson may emit spaces at random, never newlines without
	// Multiline: one message per line.
	p.w.Write(append(b, '\n'))
}

func (p *printer) record(r *tallyv1.Record) {
	if p.json {
		p.jsonLine(r)
		return
	}
	if !p.header {
		fmt.Fprintln(p.tw, "TYPE\tKEY\tSITE\tPROJECT\tVO\tUSER\tSTATUS\tSTART\tEND\tCPUS\tWALL_H\tEXTRACTED")
		p.header = true
	}
	a, err := attrsOf(r)
	if err != nil {
		fmt.Fprintf(p.tw, "?\t%s\t\t\t\t\t\t\t\t\t\t\n", r.GetKey())
		return
	}
	end := "-"
	if a.end != nil {
		end = stamp(*a.end)
	}
	wall := ""
	if c := r.GetCloud(); c != nil {
		wall = strconv.FormatFloat(float64(c.GetWallDuration())/3600, 'f', 2, 64)
	}
	cpus := ""
	if a.cpuCount > 0 {
		cpus = strconv.FormatInt(a.cpuCount, 10)
	}
	fmt.Fprintf(p.tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", record.TypeName(a.typ), r.GetKey(), a.site, a.project, a.vo,
		a.user(), a.status, stamp(a.start), end, cpus, wall, r.GetProvenance().GetExtractedAt().AsTime().UTC().Format(time.RFC3339))
}

func stamp(sec int64) string { return time.Unix(sec, 0).UTC().Format("2006-01-02 15:04") }

func (p *printer) summary(groupBy []tallyv1.UsageGroupBy, groups []*tallyv1.UsageGroup) {
	if p.json {
		for _, g := range groups {
			p.jsonLine(g)
		}
		return
	}
	var cols []string
	for _, g := range groupBy {
		cols = append(cols, strings.ToUpper(strings.TrimPrefix(g.String(), "USAGE_GROUP_BY_")))
	}
	cols = append(cols, "RECORDS", "WALL_H", "CPU_H", "NORM_CPU_H", "GPU_H", "STORAGE_GBH", "PUBLIC_IPS")
	fmt.Fprintln(p.tw, strings.Join(cols, "\t"))
	opt := func(v *float64) string {
		if v == nil {
			return "-"
		}
		return strconv.FormatFloat(*v, 'f', 2, 64)
	}
	opti := func(v *int64) string {
		if v == nil {
			return "-"
		}
		return strconv.FormatInt(*v, 10)
	}
	for _, g := range groups {
		k, v := g.GetKey(), g.GetValues()
		var cells []string
		for _, d := range groupBy {
			switch d {
			case tallyv1.UsageGroupBy_USAGE_GROUP_BY_MONTH:
				cells = append(cells, fmt.Sprintf("%04d-%02d", k.GetYear(), k.GetMonth()))
			case tallyv1.UsageGroupBy_USAGE_GROUP_BY_VO:
				cells = append(cells, k.GetVo())
			case tallyv1.UsageGroupBy_USAGE_GROUP_BY_PROJECT:
				cells = append(cells, k.GetProjectId())
			case tallyv1.UsageGroupBy_USAGE_GROUP_BY_USER:
				cells = append(cells, k.GetUser())
			case tallyv1.UsageGroupBy_USAGE_GROUP_BY_REGION:
				cells = append(cells, k.GetRegion())
			case tallyv1.UsageGroupBy_USAGE_GROUP_BY_SITE:
				cells = append(cells, k.GetSite())
			case tallyv1.UsageGroupBy_USAGE_GROUP_BY_CPU_COUNT:
				cells = append(cells, strconv.Itoa(int(k.GetCpuCount())))
			}
		}
		cells = append(cells, opti(v.RecordCount), opt(v.WallHours), opt(v.CpuHours), opt(v.NormalisedCpuHours),
			opt(v.GpuHours), opt(v.StorageGbHours), opti(v.PublicIpCount))
		fmt.Fprintln(p.tw, strings.Join(cells, "\t"))
	}
}

func (p *printer) flush() {
	if p.tw != nil {
		p.tw.Flush()
	}
}
