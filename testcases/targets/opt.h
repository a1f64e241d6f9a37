/* shared by opt.c and opt_env.c */
#ifndef OPT_H
#define OPT_H
#include <stdint.h>

/* one call of SITE through run_site (opt_sites.S): nonzero if any register, the flags,
   xmm0-15 or the red zone came back changed */
int opt_check_site_once(uint64_t site);

/* the modes of opt_env.c; -1 if argv names none of them */
int opt_env_main(int argc, char **argv);
#endif
