// Package torture tries genid's promises under faults, load and hostile
// peers, and says what it tried and what held: `make torture` runs each
// case at full size (-torture.full) and prints a table, also written as
// JSON (-torture.json); `make test` runs the short version of each. Rows
// measured elsewhere (the test bed's restore cycles, hack/mutants.sh's
// packages) join the table (-torture.include).
//
// A case is a test that calls record once with what it tried and what
// held; the test's own failure marks the row failed. Runs as root (CI
// does): the cases act as other users and bind the daemon's run dirs.
package torture

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"
)

var (
	full     = flag.Bool("torture.full", false, "run each case at its full size (make torture), not the short version (make test)")
	jsonOut  = flag.String("torture.json", "", "write the results as JSON to `FILE`")
	includes = flag.String("torture.include", "", "comma-separated JSON `FILES` of rows measured elsewhere (the test bed's, the mutants'), added to the table")
	table    = flag.Bool("torture.table", true, "print the table (make torture prints it once every part has run: -torture.table=false, then -test.run '^$' with the parts' JSON included)")
)

// Row is one case's outcome: what it tried, what held, and the figures
// measured on the way.
type Row struct {
	Case     string             `json:"case"`
	Tried    string             `json:"tried"`
	Held     string             `json:"held"`
	Failures int                `json:"failures"`
	Passed   bool               `json:"passed"`
	Seconds  float64            `json:"seconds"`
	Figures  map[string]float64 `json:"figures,omitempty"`
	Full     bool               `json:"full"`
}

var (
	rowsMu sync.Mutex
	rows   []*Row
)

// size is n at full size and short in the short version.
func size(short, n int) int {
	if *full {
		return n
	}
	return short
}

// record adds r to the table as the test's row; the test's failure, when
// it ends, marks it failed, and its duration is the test's.
func record(t *testing.T, r Row) *Row {
	t.Helper()
	start := time.Now()
	row := &r
	row.Full = *full
	rowsMu.Lock()
	rows = append(rows, row)
	rowsMu.Unlock()
	t.Cleanup(func() {
		rowsMu.Lock()
		defer rowsMu.Unlock()
		row.Passed = !t.Failed() && row.Failures == 0
		if row.Seconds == 0 {
			row.Seconds = time.Since(start).Seconds()
		}
	})
	return row
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	for _, f := range strings.Split(*includes, ",") {
		if f == "" {
			continue
		}
		var more []*Row
		b, err := os.ReadFile(f)
		if err == nil {
			err = json.Unmarshal(b, &more)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "torture: -torture.include %s: %v\n", f, err)
			code = 1
			continue
		}
		rows = append(rows, more...)
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].Case < rows[j].Case })
	if *table && len(rows) > 0 {
		printTable(os.Stdout)
	}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(rows, "", "  ")
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "torture: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func printTable(f *os.File) {
	w := tabwriter.NewWriter(f, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "CASE\tRESULT\tTRIED\tHELD\tFAILURES\tSECONDS")
	for _, r := range rows {
		res := "held"
		if !r.Passed {
			res = "FAILED"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%.1f\n", r.Case, res, r.Tried, r.Held, r.Failures, r.Seconds)
	}
	w.Flush()
	for _, r := range rows {
		if len(r.Figures) == 0 {
			continue
		}
		keys := make([]string, 0, len(r.Figures))
		for k := range r.Figures {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var b strings.Builder
		for _, k := range keys {
			fmt.Fprintf(&b, " %s=%g", k, r.Figures[k])
		}
		fmt.Fprintf(f, "%s:%s\n", r.Case, b.String())
	}
}
