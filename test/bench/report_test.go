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
