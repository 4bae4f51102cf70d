package main

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

const src = `#include <stdio.h>
#define LIMIT (1 < 2)
static int other(int a) { return a + 1; }

/* f: a < b in a comment */
static int f(struct s *p, const char *q)
{
	struct s *t = p;
	char *u = "a < b - c";	// x == y
	int n = -1, i;

	for (i = 0; i < n && p->v != '-'; i++)
		n += *q * 2 - t->w;
	return n <= 3 || sizeof *q;
}
static int g(void) { return 1 - 2; }
`

// Only the bodies of the functions named are mutated, and only their
// binary operators: nothing in a comment, a string or character literal, a
// preprocessor line, no ->, no pointer's * or unary - or *.
func TestList(t *testing.T) {
	ms, err := list(src, []string{"f", "g"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	lines := strings.Split(src, "\n")
	for _, m := range ms {
		if lines[m.line-1][m.col-1:m.col-1+len(m.orig)] != m.orig {
			t.Errorf("%d:%d is not %q", m.line, m.col, m.orig)
		}
		got = append(got, fmt.Sprintf("%s %d %s>%s", m.fn, m.line, m.orig, m.repl))
	}
	want := []string{
		"f 12 <><=", "f 12 <>>=", "f 12 &&>||", "f 12 !=>==", "f 12 ++>--",
		"f 13 +=>-=", "f 13 *>/", "f 13 ->+",
		"f 14 <=><", "f 14 <=>>", "f 14 ||>&&",
		"g 16 ->+",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("mutants:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := list(src, []string{"missing"}); err == nil {
		t.Error("a missing function listed")
	}
	if _, err := list("static int h(void) { if (1) {\n", []string{"h"}); err == nil {
		t.Error("a body without its end listed")
	}
}

// The plugin's reader and writer are all found in the real source.
func TestPlugin(t *testing.T) {
	b, err := os.ReadFile("../../genid-criu.c")
	if err != nil {
		t.Fatal(err)
	}
	for _, fn := range []string{"take", "get_name", "parse_record", "read_record", "put", "put_str16", "write_record"} {
		ms, err := list(string(b), []string{fn})
		if err != nil || len(ms) == 0 {
			t.Errorf("%s: %d mutants, %v", fn, len(ms), err)
		}
	}
}
