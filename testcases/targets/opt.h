/* shared by opt.c and opt_env.c */
#ifndef OPT_H
#define OPT_H
#include <stdint.h>

/* one call of SITE through run_site (opt_sites.S): nonzero if any register, the flags,
   xmm0-15 or the red zone came back changed */
int opt_check_site_once(uint64_t site);

/* /proc/self/maps: the [uprobes-trampoline] mapping (the last one if several; 0 if none),
   and whether an address lies in one */
int trampoline_mapping(uint64_t *lo, uint64_t *hi);
int in_trampoline(uint64_t addr);

/* where the call in bytes 5..9 of a site goes (0 if there is no call) */
uint64_t call_target(const uint8_t *site);

/* the modes of opt_env.c; -1 if argv names none of them */
int opt_env_main(int argc, char **argv);
#endif
