package main

import (
	"strings"
	"testing"
)

func TestMarkdownNotes(t *testing.T) {
	ms := func(v float64) Stat { return Stat{Unit: "ms", N: 3, Median: v, P99: v} }
	floor := "no target, at every N: the daemon's own cost"
	rep := &Report{Facts: map[string]any{"b fact": 2, "a fact": 1}}
	for _, n := range []string{"fan-out N=1", "fan-out N=100"} {
		r := compare(n, ms(2), "AF_UNIX floor", ms(1), true)
		r.Note = floor
		rep.add(r)
	}
	rep.add(Row{Name: "memory", Figure: Stat{Unit: "bytes", N: 3, Median: 400, P99: 400}, Note: "RSS growth / N"}.goal("≤ 2 KiB", true))
	md := rep.Markdown()

	for _, want := range []string{
		"| fan-out N=100 (n=3) | 2.00 ms / 2.00 ms | AF_UNIX floor | 1.00 ms / 1.00 ms | 2× (genid / AF_UNIX floor) | – | – |",
		"| memory (n=3) | 400 B / 400 B | – | – | – | ≤ 2 KiB | **pass** |",
		"- genid / AF_UNIX floor: " + floor + "\n",
		"- memory: RSS growth / N\n",
		"- a fact: 1\n- b fact: 2\n",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if c := strings.Count(md, floor); c != 1 {
		t.Errorf("the floor's note appears %d times, want once:\n%s", c, md)
	}
	if len(rep.Targets) != 1 || rep.Targets[0].Name != "memory" {
		t.Errorf("targets = %+v, want the memory row only", rep.Targets)
	}
}

func TestReplaceSummary(t *testing.T) {
	doc := "# x\n\n" + summaryBegin + "old table\n" + summaryEnd + "after\n"
	got, err := replaceSummary(doc, "new table\n")
	if err != nil || got != "# x\n\n"+summaryBegin+"new table\n"+summaryEnd+"after\n" {
		t.Fatalf("replaceSummary = %q, %v", got, err)
	}
	for _, bad := range []string{"no markers\n", summaryEnd + summaryBegin} {
		if _, err := replaceSummary(bad, "t"); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	rep := &Report{Started: "2026-12-07T05:00:00Z"}
	ms := func(v float64) Stat { return Stat{Unit: "ms", N: 3, Median: v, P99: v} }
	rep.add(compare("barrier N=1000", ms(2), "eventfd", ms(1), true).goal("≤ 3×", true))
	rep.add(compare("fan-out N=1", ms(2), "eventfd", ms(1), true))
	s := rep.Summary()
	if !strings.Contains(s, "| barrier N=1000 (n=3) | 2.00 ms | 2× (genid / eventfd) | ≤ 3× | pass |") || strings.Contains(s, "fan-out") || !strings.Contains(s, "2026-12-07") {
		t.Fatalf("summary:\n%s", s)
	}
}

func TestGoalCI(t *testing.T) {
	r := Row{Name: "x", Ratio: ptr(1.04)}
	for _, c := range []struct {
		ci   [2]float64
		want string
		pass *bool
	}{
		{[2]float64{1.0, 1.05}, "pass", ptr(true)},
		{[2]float64{1.051, 1.2}, "fail", ptr(false)},
		{[2]float64{1.0, 1.06}, "inconclusive", nil},
	} {
		got := r.goalCI("≤ 1.05×", 1.05, c.ci)
		if got.Verdict != c.want || (got.Pass == nil) != (c.pass == nil) || (got.Pass != nil && *got.Pass != *c.pass) {
			t.Errorf("%v: verdict %q pass %v, want %q %v", c.ci, got.Verdict, got.Pass, c.want, c.pass)
		}
		rep := &Report{}
		rep.add(got)
		if len(rep.Targets) != 1 {
			t.Errorf("%v: a row with a target is not among the targets", c.ci)
		}
	}
}

func TestRatioCI(t *testing.T) {
	a, b := make([]float64, 200), make([]float64, 200)
	for i := range a {
		noise := float64(i%17) / 10
		a[i], b[i] = 2*(1+noise), 1+noise
	}
	ci := ratioCI(a, b)
	if ci[0] > 2 || ci[1] < 2 || ci[1]-ci[0] > 0.5 {
		t.Errorf("ratioCI of a = 2b = %v, want an interval around 2", ci)
	}
	if ci := ratioCI(a, b[:10]); ci[0] == ci[0] {
		t.Errorf("ratioCI of unequal lengths = %v, want NaN", ci)
	}
}

func TestSummaryFromJSON(t *testing.T) {
	ms := func(v float64) Stat { return Stat{Unit: "ms", N: 3, Median: v, P99: v, Samples: []float64{v}} }
	rep := &Report{Started: "2026-12-07T05:00:00Z", Facts: map[string]any{}}
	rep.add(compare("fan-out N=1", ms(2), "AF_UNIX floor", ms(1), true).goalCI("≤ 1.3×", 1.3, [2]float64{1.9, 2.1}))
	rep.add(compare("restore", ms(1.04), "without", ms(1), true).goalCI("≤ 1.05×", 1.05, [2]float64{1.03, 1.06}))
	path := t.TempDir() + "/results.json"
	if err := rep.write(path); err != nil {
		t.Fatal(err)
	}
	back, err := readReport(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := back.Summary(), rep.Summary(); got != want {
		t.Fatalf("summary from JSON:\n%s\nwant:\n%s", got, want)
	}
	if !strings.Contains(back.Summary(), "_inconclusive_") || !strings.Contains(back.Summary(), "**FAIL**") {
		t.Fatalf("summary lacks a verdict:\n%s", back.Summary())
	}
}

// A figure's parts (ratioRow) carry their ratio and interval but no
// target: they are in the table, not among the targets or in the README's
// summary.
func TestRatioRow(t *testing.T) {
	ms := func(v float64) Stat { return Stat{Unit: "ms", N: 3, Median: v, P99: v, Samples: []float64{v}} }
	rep := &Report{Facts: map[string]any{}}
	rep.add(ratioRow("restore: an empty plugin", "the empty plugin", ms(1.02), "none", ms(1), "what any plugin costs", [2]float64{1.01, 1.03}))
	if len(rep.Figures) != 1 || len(rep.Targets) != 0 {
		t.Fatalf("figures %d, targets %d: want 1 and 0", len(rep.Figures), len(rep.Targets))
	}
	md := rep.Markdown()
	for _, want := range []string{"| 1.02× [1.01, 1.03] (the empty plugin / none) | – | – |", "- the empty plugin / none: what any plugin costs"} {
		if !strings.Contains(md, want) {
			t.Errorf("table lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(rep.Summary(), "empty plugin") {
		t.Errorf("the summary has a row without a target:\n%s", rep.Summary())
	}
}
