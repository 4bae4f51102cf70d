// SPDX-License-Identifier: Apache-2.0
/*
 * hwbp-probe - do x86 hardware breakpoints set through ptrace fire here?
 *
 * CRIU's compel stops a parasite at its rt_sigreturn the way this probe stops
 * its child: PTRACE_POKEUSER of u_debugreg[0] (the address) and u_debugreg[7]
 * (local enable of slot 0, execute), PTRACE_CONT, then wait for the SIGTRAP.
 * On some virtual machines the pokes succeed and the trap never comes, and
 * criu then waits for ever. CRIU's fault-injection code 130 ("no
 * breakpoints", CRIU_FAULT=130 in criu's environment) makes compel trap the
 * syscall instead; hack/testbed.sh sets it only where this probe says so.
 *
 * Usage: hwbp-probe [spin]
 *   The child calls the breakpointed function in a loop, then exits. With
 *   "spin" it never calls it and never exits: that checks the probe's own
 *   bound, which kills a child that neither traps nor exits within a second.
 *
 * Prints one line and exits with its status:
 *   fire                 0  the child stopped with SIGTRAP and DR6 names slot 0
 *   never: WHY           1  the child ran past the breakpoint (or the pokes
 *                           failed): criu needs CRIU_FAULT=130 here
 *   error: WHY           2  the probe could not tell (fork, ptrace, wait failed)
 */
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#define PROBE_CALLS	100000
#define PROBE_SECONDS	1

#define DR_OFFSET(n)	offsetof(struct user, u_debugreg[n])
#define DR7_L0		0x1UL	/* local enable, slot 0; RW0 = LEN0 = 0: execute */
#define DR6_B0		0x1UL	/* slot 0 was hit */

static volatile unsigned long calls;

/* The breakpoint's target: not inlined, so it has an address of its own. */
__attribute__((noinline)) static void probe_target(void)
{
	calls++;
}

static void on_alarm(int sig)
{
	(void)sig;	/* only there to interrupt waitpid */
}

static void child(int spin)
{
	unsigned long i;

	if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) < 0)
		_exit(3);
	raise(SIGSTOP);
	if (spin)
		for (;;)
			pause();
	for (i = 0; i < PROBE_CALLS; i++)
		probe_target();
	_exit(0);
}

static int verdict(int code, const char *what, const char *detail)
{
	printf("%s: %s\n", what, detail);
	return code;
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	char why[128];
	long dr6;
	pid_t pid;
	int spin, status, ret;

	spin = argc > 1 && strcmp(argv[1], "spin") == 0;

	pid = fork();
	if (pid < 0)
		return verdict(2, "error", strerror(errno));
	if (pid == 0)
		child(spin);

	if (waitpid(pid, &status, 0) != pid)
		return verdict(2, "error", "waitpid for the child's stop failed");
	if (!WIFSTOPPED(status) || WSTOPSIG(status) != SIGSTOP) {
		kill(pid, SIGKILL);
		return verdict(2, "error", "the child did not stop for tracing");
	}

	if (ptrace(PTRACE_POKEUSER, pid, (void *)DR_OFFSET(0), (void *)probe_target) < 0 ||
	    ptrace(PTRACE_POKEUSER, pid, (void *)DR_OFFSET(7), (void *)DR7_L0) < 0) {
		snprintf(why, sizeof(why), "PTRACE_POKEUSER of a debug register: %s", strerror(errno));
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return verdict(1, "never", why);
	}

	/* No SA_RESTART: the alarm must interrupt waitpid. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	alarm(PROBE_SECONDS);

	if (ptrace(PTRACE_CONT, pid, NULL, NULL) < 0) {
		snprintf(why, sizeof(why), "PTRACE_CONT: %s", strerror(errno));
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return verdict(2, "error", why);
	}

	ret = waitpid(pid, &status, 0);
	alarm(0);
	if (ret < 0 && errno == EINTR) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		snprintf(why, sizeof(why), "no trap within %d s: child killed", PROBE_SECONDS);
		return verdict(1, "never", why);
	}
	if (ret != pid)
		return verdict(2, "error", "waitpid for the trap failed");

	if (WIFEXITED(status)) {
		snprintf(why, sizeof(why), "the child ran past the breakpoint to its exit (%d)",
			 WEXITSTATUS(status));
		return verdict(1, "never", why);
	}
	if (!WIFSTOPPED(status)) {
		snprintf(why, sizeof(why), "the child ended with status %#x", status);
		return verdict(2, "error", why);
	}
	if (WSTOPSIG(status) != SIGTRAP) {
		snprintf(why, sizeof(why), "the child stopped with signal %d, not SIGTRAP", WSTOPSIG(status));
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return verdict(2, "error", why);
	}

	errno = 0;
	dr6 = ptrace(PTRACE_PEEKUSER, pid, (void *)DR_OFFSET(6), NULL);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	if (errno != 0)
		return verdict(2, "error", "PTRACE_PEEKUSER of DR6 failed");
	if (!(dr6 & DR6_B0)) {
		snprintf(why, sizeof(why), "SIGTRAP, but DR6 (%#lx) does not name the breakpoint", dr6);
		return verdict(2, "error", why);
	}
	printf("fire\n");
	return 0;
}
