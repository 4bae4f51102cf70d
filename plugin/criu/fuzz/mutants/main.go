// Command mutants lists the operator mutants of C functions, for
// hack/mutants-c.sh's mutation testing of the CRIU plugin's record reader
// and writer (gremlins mutates Go only).
//
//	mutants FILE FUNC...
//
// prints a line a mutant, tab-separated: the line and byte column (from 1)
// of the operator, the operator, its mutant, the function. The operators are
// gremlins' default ones, and two of its optional ones:
//
//	conditionals boundary   <  <=  >  >=   to  <=  <  >=  >
//	conditionals negation   ==  !=  <  <=  >  >=   to  !=  ==  >=  >  <=  <
//	arithmetic              binary + - * / %   to  - + / * *
//	increment, decrement    ++  --   to  --  ++
//	invert assignments      +=  -=   to  -=  +=
//	invert logical          &&  ||   to  ||  &&
//
// Only the bodies of the FUNCs are read (from the brace after a line
// "static ... FUNC(" to its match), as tokens: string and character
// literals, comments and preprocessor lines are never mutated, nor -> or a
// * or - that is not a binary operator (a pointer's declaration, a
// dereference, a negative number).
package main

import (
	"fmt"
	"os"
	"regexp"
	"strings"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: mutants FILE FUNC...")
		os.Exit(2)
	}
	src, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "mutants:", err)
		os.Exit(1)
	}
	ms, err := list(string(src), os.Args[2:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "mutants:", err)
		os.Exit(1)
	}
	for _, m := range ms {
		fmt.Printf("%d\t%d\t%s\t%s\t%s\n", m.line, m.col, m.orig, m.repl, m.fn)
	}
}

type mutant struct {
	line, col  int
	orig, repl string
	fn         string
}

// token is a C token: an identifier, a number, an operator or punctuation.
type token struct {
	text      string
	line, col int
	off       int
}

// swaps are the operators' mutants.
var swaps = map[string][]string{
	"<": {"<=", ">="}, "<=": {"<", ">"}, ">": {">=", "<="}, ">=": {">", "<"},
	"==": {"!="}, "!=": {"=="},
	"+": {"-"}, "-": {"+"}, "*": {"/"}, "/": {"*"}, "%": {"*"},
	"++": {"--"}, "--": {"++"},
	"+=": {"-="}, "-=": {"+="},
	"&&": {"||"}, "||": {"&&"},
}

// list returns the mutants of the bodies of funcs in src, in order.
func list(src string, funcs []string) ([]mutant, error) {
	toks := tokens(src)
	var out []mutant
	for _, fn := range funcs {
		def := regexp.MustCompile(`(?m)^static [^(;]*\b` + regexp.QuoteMeta(fn) + `\(`)
		loc := def.FindStringIndex(src)
		if loc == nil {
			return nil, fmt.Errorf("no definition of %s", fn)
		}
		i := 0
		for i < len(toks) && (toks[i].off < loc[1] || toks[i].text != "{") {
			i++
		}
		depth := 0
		for ; i < len(toks); i++ {
			t := toks[i].text
			switch t {
			case "{":
				depth++
			case "}":
				depth--
			}
			if depth == 0 {
				break
			}
			reps, ok := swaps[t]
			if !ok || (t == "+" || t == "-" || t == "*" || t == "/" || t == "%") && !binary(toks, i) {
				continue
			}
			for _, r := range reps {
				out = append(out, mutant{toks[i].line, toks[i].col, t, r, fn})
			}
		}
		if depth != 0 {
			return nil, fmt.Errorf("%s: no end to its body", fn)
		}
	}
	return out, nil
}

// typeWords precede a * that declares a pointer.
var typeWords = map[string]bool{
	"char": true, "int": true, "void": true, "short": true, "long": true, "unsigned": true,
	"signed": true, "const": true, "size_t": true, "ssize_t": true, "uint8_t": true,
	"uint16_t": true, "uint32_t": true, "uint64_t": true, "int64_t": true,
}

// binary tells whether the operator toks[i] has a left operand.
func binary(toks []token, i int) bool {
	if i == 0 {
		return false
	}
	p := toks[i-1].text
	switch {
	case p == ")" || p == "]":
		return true
	case p == "return" || p == "sizeof" || p == "case":
		return false
	case isWord(p[0]):
		if toks[i].text == "*" && (typeWords[p] || i > 1 && toks[i-2].text == "struct") {
			return false
		}
		return true
	}
	return false
}

func isWord(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// ops are C's operators and punctuation of more than one character,
// longest first.
var ops = []string{"<<=", ">>=", "...", "->", "++", "--", "<<", ">>", "<=", ">=", "==", "!=", "&&", "||",
	"+=", "-=", "*=", "/=", "%=", "&=", "|=", "^="}

// tokens splits C source into tokens, leaving out comments, string and
// character literals and preprocessor lines.
func tokens(src string) []token {
	var toks []token
	line, col := 1, 1
	advance := func(n int) {
		for _, c := range []byte(src[:n]) {
			if c == '\n' {
				line, col = line+1, 1
			} else {
				col++
			}
		}
		src = src[n:]
	}
	total := len(src)
	bol := true // only blanks since the line's start
	for len(src) > 0 {
		c := src[0]
		switch {
		case c == '\n':
			advance(1)
			bol = true
			continue
		case c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v':
			advance(1)
			continue
		case bol && c == '#':
			// A preprocessor line, with its continuations.
			n := 0
			for n < len(src) && (src[n] != '\n' || n > 0 && src[n-1] == '\\') {
				n++
			}
			advance(n)
			continue
		}
		bol = false
		switch {
		case strings.HasPrefix(src, "//"):
			n := strings.IndexByte(src, '\n')
			if n < 0 {
				n = len(src)
			}
			advance(n)
		case strings.HasPrefix(src, "/*"):
			n := strings.Index(src[2:], "*/")
			if n < 0 {
				advance(len(src))
			} else {
				advance(n + 4)
			}
		case c == '"' || c == '\'':
			n := 1
			for n < len(src) && src[n] != c && src[n] != '\n' {
				if src[n] == '\\' {
					n++
				}
				n++
			}
			advance(min(n+1, len(src)))
		case isWord(c):
			n := 0
			for n < len(src) && (isWord(src[n]) || src[n] == '.' && c >= '0' && c <= '9') {
				n++
			}
			toks = append(toks, token{src[:n], line, col, total - len(src)})
			advance(n)
		default:
			n := 1
			for _, op := range ops {
				if strings.HasPrefix(src, op) {
					n = len(op)
					break
				}
			}
			toks = append(toks, token{src[:n], line, col, total - len(src)})
			advance(n)
		}
	}
	return toks
}
