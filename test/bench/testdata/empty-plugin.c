/*
 * empty-plugin.c - a CRIU plugin that does nothing: the bench's restore
 * figure measures restores with it beside those with genid's plugin and
 * without any, to tell what CRIU's loading of any plugin costs from what
 * genid's does.
 */
#include <criu/criu-plugin.h>

static int empty_init(int stage)
{
	return 0;
}

static void empty_exit(int stage, int ret)
{
}

CR_PLUGIN_REGISTER("empty", empty_init, empty_exit)
