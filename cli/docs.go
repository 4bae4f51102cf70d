package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

// generateCommand writes genidctl's man page and shell completions, made
// from the command definitions themselves, for `make man` and the
// package: they cannot drift from the commands.
func generateCommand() *cli.Command {
	return &cli.Command{
		Name:      "generate",
		Usage:     "write genidctl's man page or a shell completion to stdout (for packaging)",
		ArgsUsage: "man|bash|zsh|fish",
		Hidden:    true,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageError{errors.New("generate: want one of man, bash, zsh, fish")}
			}
			var out string
			var err error
			switch c.Args().First() {
			case "man":
				out, err = c.App.ToManWithSection(8)
			case "fish":
				out, err = c.App.ToFishCompletion()
			case "bash":
				out = bashCompletion
			case "zsh":
				out = zshCompletion
			default:
				return usageError{fmt.Errorf("generate %q: want one of man, bash, zsh, fish", c.Args().First())}
			}
			if err != nil {
				return fmt.Errorf("generate: %w", err)
			}
			_, err = os.Stdout.WriteString(out)
			return err
		},
	}
}

// bashCompletion and zshCompletion ask genidctl itself for the words that
// can follow (urfave/cli's --generate-bash-completion): the commands, and
// a command's flags after a "-".
const bashCompletion = `# bash completion for genidctl: the words come from genidctl itself
_genidctl() {
	local cur=${COMP_WORDS[COMP_CWORD]}
	local -a words=("${COMP_WORDS[@]:0:COMP_CWORD}")
	[[ $cur == -* ]] && words+=("$cur")
	local IFS=$'\n'
	COMPREPLY=($(compgen -W "$("${words[@]}" --generate-bash-completion 2>/dev/null)" -- "$cur"))
}
complete -o bashdefault -o default -F _genidctl genidctl
`

const zshCompletion = `#compdef genidctl
# zsh completion for genidctl: the words come from genidctl itself
_genidctl() {
	local -a args=("${(@)words[1,CURRENT-1]}")
	[[ $PREFIX == -* ]] && args+=("$PREFIX")
	local -a opts=("${(@f)$("${args[@]}" --generate-bash-completion 2>/dev/null)}")
	compadd -a opts
}
compdef _genidctl genidctl
`
