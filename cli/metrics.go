package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
)

func metricsCommand() *cli.Command {
	return &cli.Command{
		Name:  "metrics",
		Usage: "print the daemon's metrics, in the Prometheus text format (an administrator's)",
		Description: "What the daemon's opt-in listener (daemon --metrics-listen) serves, asked on the admin\n" +
			"socket: no listener needed. See docs/observe.md for the metrics.",
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			a, err := openAdmin(c)
			if err != nil {
				return err
			}
			defer a.Close()
			text, err := a.Metrics(c.Context)
			if err != nil {
				return err
			}
			_, err = os.Stdout.Write(text)
			return err
		},
	}
}

// listenMetrics opens the metrics listener: a unix socket when addr is a
// path (it holds a '/'), else TCP. The unix socket is the daemon's user's
// (and the admin group's, if any) alone; a TCP port is anyone's who can
// reach it: the metrics name no process nor user, only the scopes.
func listenMetrics(addr string, adminGroup int) (net.Listener, error) {
	if !strings.Contains(addr, "/") {
		return net.Listen("tcp", addr)
	}
	if fi, err := os.Lstat(addr); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", addr)
		}
		if err := os.Remove(addr); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	ln, err := net.Listen("unix", addr)
	if err != nil {
		return nil, err
	}
	mode := os.FileMode(0o600)
	if adminGroup >= 0 {
		mode = 0o660
		if err := os.Lchown(addr, -1, adminGroup); err != nil {
			ln.Close()
			return nil, err
		}
	}
	if err := os.Chmod(addr, mode); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}
