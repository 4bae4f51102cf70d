package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"strings"
)

// Row is one line of the table: a genid figure, maybe against one baseline.
// A row with a target carries Pass; JSON lists those as targets.
type Row struct {
	Name      string          `json:"name"`
	Figure    Stat            `json:"figure"`
	Baselines map[string]Stat `json:"baselines,omitempty"`
	Ratio     *float64        `json:"ratio,omitempty"`
	RatioOf   string          `json:"ratio_of,omitempty"` // how Ratio is computed
	// CI is a 95% confidence interval of Ratio, where the row has one.
	CI     *[2]float64 `json:"ratio_ci95,omitempty"`
	Target string      `json:"target,omitempty"`
	// Pass is the target's verdict; nil on a row with a target means
	// inconclusive: the ratio's interval straddles the target.
	Pass    *bool  `json:"pass,omitempty"`
	Verdict string `json:"verdict,omitempty"` // pass, fail or inconclusive
	Note    string `json:"note,omitempty"`
}

type Report struct {
	Machine Machine        `json:"machine"`
	Started string         `json:"started"`
	Seconds float64        `json:"seconds"`
	Targets []Row          `json:"targets"`
	Figures []Row          `json:"figures"` // everything measured, targets included
	Facts   map[string]any `json:"facts"`
	Errors  []string       `json:"errors,omitempty"`
}

type Machine struct {
	Nproc  int    `json:"nproc"`
	CPU    string `json:"cpu"`
	Kernel string `json:"kernel"`
	Go     string `json:"go"`
	OS     string `json:"os"`
}

func ptr[T any](v T) *T { return &v }

// compare builds a row of genid against one baseline. slower: the ratio is
// genid/baseline (lower is better); else baseline/genid (how many times
// faster genid is).
func compare(name string, g Stat, bname string, b Stat, slower bool) Row {
	r := Row{Name: name, Figure: g, Baselines: map[string]Stat{bname: b}}
	if slower {
		r.Ratio, r.RatioOf = ptr(g.Median/b.Median), "genid / "+bname
	} else {
		r.Ratio, r.RatioOf = ptr(b.Median/g.Median), bname+" / genid"
	}
	return r
}

// goal sets a row's target and decides it.
func (r Row) goal(target string, pass bool) Row {
	r.Target, r.Pass = target, &pass
	r.Verdict = map[bool]string{true: "pass", false: "fail"}[pass]
	return r
}

// goalCI sets a ratio target (Ratio ≤ limit) decided on the ratio's
// confidence interval: pass if all of it is at or under the limit, fail if
// all of it is over, else inconclusive, so that one noisy run neither
// passes nor fails it.
func (r Row) goalCI(target string, limit float64, ci [2]float64) Row {
	r.CI, r.Target = &ci, target
	switch {
	case ci[1] <= limit:
		r.Pass, r.Verdict = ptr(true), "pass"
	case ci[0] > limit:
		r.Pass, r.Verdict = ptr(false), "fail"
	default:
		r.Verdict = "inconclusive"
	}
	return r
}

func (rep *Report) add(r Row) {
	rep.Figures = append(rep.Figures, r)
	if r.Verdict != "" {
		rep.Targets = append(rep.Targets, r)
	}
}

// result renders a row's verdict.
func (r Row) result(bold bool) string {
	switch r.Verdict {
	case "":
		return "–"
	case "fail":
		return "**FAIL**"
	case "inconclusive":
		return "_inconclusive_"
	}
	if bold {
		return "**pass**"
	}
	return "pass"
}

// ratioCell renders a row's ratio, with its interval if it has one.
func (r Row) ratioCell() string {
	if r.Ratio == nil {
		return "–"
	}
	s := fmt.Sprintf("%.3g×", *r.Ratio)
	if r.CI != nil {
		s += fmt.Sprintf(" [%.3g, %.3g]", r.CI[0], r.CI[1])
	}
	return s + " (" + r.RatioOf + ")"
}

func num(v float64, unit string) string {
	if math.IsNaN(v) {
		return "–"
	}
	switch {
	case unit == "ns/op" && v < 10:
		return fmt.Sprintf("%.2f ns", v)
	case unit == "ns/op":
		return fmt.Sprintf("%.0f ns", v)
	case unit == "ms" && v < 1:
		return fmt.Sprintf("%.0f µs", v*1000)
	case unit == "ms" && v < 10:
		return fmt.Sprintf("%.2f ms", v)
	case unit == "ms":
		return fmt.Sprintf("%.1f ms", v)
	case unit == "bytes":
		return fmt.Sprintf("%.0f B", v)
	}
	return fmt.Sprintf("%.4g %s", v, unit)
}

func cell(s Stat) string {
	return num(s.Median, s.Unit) + " / " + num(s.P99, s.Unit)
}

// Markdown renders the table: medians / p99 over the runs.
func (rep *Report) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Machine: %d cores, %s, Linux %s, %s, %s. Medians / p99 of the runs (n = runs); "+
		"[lo, hi]: a ratio's 95%% bootstrap interval.\n\n",
		rep.Machine.Nproc, rep.Machine.CPU, rep.Machine.Kernel, rep.Machine.OS, rep.Machine.Go)
	b.WriteString("| figure | genid | baseline | baseline figure | ratio | target | result |\n")
	b.WriteString("|---|---|---|---|---|---|---|\n")
	for _, r := range rep.Figures {
		base, bcell := "–", "–"
		for name, s := range r.Baselines {
			base, bcell = name, cell(s)
		}
		target := "–"
		if r.Verdict != "" {
			target = r.Target
		}
		fmt.Fprintf(&b, "| %s (n=%d) | %s | %s | %s | %s | %s | %s |\n",
			r.Name, r.Figure.N, cell(r.Figure), base, bcell, r.ratioCell(), target, r.result(true))
	}
	b.WriteString("\n")
	// How figures are taken. A note on a comparison is about that baseline,
	// and the floor's repeats at every N: each note once.
	seen := map[string]bool{}
	for _, r := range rep.Figures {
		if r.Note == "" || seen[r.Note] {
			continue
		}
		seen[r.Note] = true
		label := r.Name
		if r.RatioOf != "" {
			label = r.RatioOf
		}
		fmt.Fprintf(&b, "- %s: %s\n", label, r.Note)
	}
	for _, k := range slices.Sorted(maps.Keys(rep.Facts)) {
		fmt.Fprintf(&b, "- %s: %v\n", k, rep.Facts[k])
	}
	for _, e := range rep.Errors {
		fmt.Fprintf(&b, "- ERROR: %s\n", e)
	}
	return b.String()
}

func (rep *Report) write(path string) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// readReport reads the JSON a run wrote.
func readReport(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &rep, nil
}

func jsonLine(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

// Summary renders the targets alone, for the README: what was measured
// against what, and whether it met its target. The full table is
// Markdown's.
func (rep *Report) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "`make bench` on %d cores (%s), Linux %s, %s, %s; medians of n runs; [lo, hi]: a ratio's 95%% bootstrap interval.\n\n",
		rep.Machine.Nproc, rep.Machine.CPU, rep.Machine.Kernel, rep.Machine.OS, day(rep.Started))
	b.WriteString("| figure | genid | ratio | target | result |\n|---|---|---|---|---|\n")
	for _, r := range rep.Targets {
		fmt.Fprintf(&b, "| %s (n=%d) | %s | %s | %s | %s |\n", r.Name, r.Figure.N, num(r.Figure.Median, r.Figure.Unit), r.ratioCell(), r.Target, r.result(false))
	}
	return b.String()
}

// day is the date of an RFC 3339 time.
func day(t string) string {
	day, _, _ := strings.Cut(t, "T")
	return day
}

// The README's results table lies between these lines; `make bench`
// rewrites what is between them.
const (
	summaryBegin = "<!-- bench results: begin (make bench rewrites this) -->\n"
	summaryEnd   = "<!-- bench results: end -->\n"
)

// replaceSummary returns doc with what lies between the markers replaced
// by summary.
func replaceSummary(doc, summary string) (string, error) {
	i := strings.Index(doc, summaryBegin)
	j := strings.Index(doc, summaryEnd)
	if i < 0 || j < i {
		return "", fmt.Errorf("no results markers (%q ... %q)", strings.TrimSpace(summaryBegin), strings.TrimSpace(summaryEnd))
	}
	return doc[:i+len(summaryBegin)] + summary + doc[j:], nil
}

// updateReadme writes the summary into the README at path.
func (rep *Report) updateReadme(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	doc, err := replaceSummary(string(b), rep.Summary())
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return os.WriteFile(path, []byte(doc), 0o644)
}
