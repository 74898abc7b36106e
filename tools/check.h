/* SPDX-License-Identifier: MIT */
/*
 * tools/check.h - the engine of `vuf check`: a conformance suite run as a
 * front-end against a vhost-user back-end, callable in-process (the unit
 * test runs it against fake back-ends) as well as from the command line.
 *
 * Every check has an id ("config.offset"), the rule it checks and where the
 * rule is written (a section of QEMU's docs/interop/vhost-user.rst or of
 * virtio 1.2), and ends PASS, FAIL (the back-end broke the rule), SKIP (the
 * back-end does not offer what the rule is about, or the check was not
 * asked for) or ERROR (the back-end hung up or went silent where the rule
 * expects neither, so the rule could not be judged). Each result carries
 * the evidence: what was sent and what came back.
 *
 * Connections: checks that leave the back-end in a state the next check
 * must not inherit (memory, rings, state transfers, hostile messages) are
 * followed by a new connection; the others share one. A back-end that does
 * not accept a second front-end (virtiofsd and vhost-user-gpu serve one
 * connection) gets ERROR on every later check, saying so.
 *
 * Not thread-safe; one run at a time per struct.
 */
#ifndef VUF_TOOL_CHECK_H
#define VUF_TOOL_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum chk_status {
    CHK_PASS = 0,
    CHK_FAIL,
    CHK_SKIP,
    CHK_ERROR,
};

/* "PASS", "FAIL", "SKIP", "ERROR". */
const char *chk_status_name(enum chk_status s);

struct chk_opts {
    const char *socket;
    uint32_t device_type; /* virtio device id; 0: not given (device checks SKIP) */
    const char *only;     /* comma-separated ids or id prefixes ("ring."); NULL: all */
    int timeout_ms;       /* connect wait and every reply (> 0) */
    bool hostile;         /* run the robustness checks */
    int settle_ms;        /* how long "nothing happened" is watched; 0: 200 */
};

#define CHK_EVIDENCE_MAX 4096

struct chk_result {
    const char *id;
    const char *rule;
    const char *ref;
    enum chk_status status;
    char evidence[CHK_EVIDENCE_MAX]; /* lines separated by '\n' */
};

struct chk_report {
    struct chk_result *results; /* one per check of the suite, in order */
    unsigned n;
    unsigned passed, failed, skipped, errors;
};

/* The suite: id, rule and reference of check i (i < chk_count()). */
unsigned chk_count(void);
const char *chk_id(unsigned i);

/* True if `only` (comma-separated ids or prefixes ending in '.') names at
 * least one check; false names the first unknown entry in *bad. */
bool chk_only_valid(const char *only, const char **bad, size_t *bad_len);

/*
 * Run the suite against o->socket. Fills *rep (free with chk_report_free).
 * Returns 0 when the suite ran (whatever its outcome), -ENOMEM, or the
 * connect error when not even the first connection could be made (then
 * *rep is empty).
 */
int chk_run(const struct chk_opts *o, struct chk_report *rep);
void chk_report_free(struct chk_report *rep);

/* The result of check `id` in rep, or NULL. */
const struct chk_result *chk_find(const struct chk_report *rep, const char *id);

/* Output: a test runner's lines ending with "N passed, N failed, N skipped,
 * N errors"; one JSON object; JUnit XML (one testcase per check). Each
 * returns 0 or -EIO when the stream failed. */
int chk_print_human(FILE *f, const struct chk_report *rep, const char *socket, bool verbose);
int chk_print_json(FILE *f, const struct chk_report *rep, const char *socket);
int chk_print_junit(FILE *f, const struct chk_report *rep, const char *socket);

#endif
