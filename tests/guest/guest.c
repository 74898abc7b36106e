/* SPDX-License-Identifier: MIT */
/* The guest harness: see guest.h. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "guest.h"

/* The virtio drivers are modules in Debian's cloud kernel (=m), loaded in
 * dependency order by busybox insmod (it has no modprobe database here). */
static const char *const modules[] = {
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/drivers/block/virtio_blk.ko",
};
#define NMODULES (sizeof(modules) / sizeof(modules[0]))

static int vercmp(const void *a, const void *b)
{
    return strverscmp(*(char *const *)a, *(char *const *)b);
}

bool tg_find_kernel(char *vmlinuz, size_t vcap, char *moddir, size_t mcap)
{
    char *names[64];
    unsigned n = 0;
    struct dirent *de;
    DIR *d = opendir("/boot");
    bool ok = false;

    if (!tu_backend_installed(TG_QEMU, "qemu-system-x86") ||
        !tu_backend_installed(TG_BUSYBOX, "busybox-static"))
        return false;
    while (d && (de = readdir(d)) && n < 64) {
        size_t l = strlen(de->d_name);

        if (strncmp(de->d_name, "vmlinuz-", 8) == 0 && l > 11 &&
            strcmp(de->d_name + l - 11, "cloud-amd64") == 0)
            names[n++] = strdup(de->d_name + 8);
    }
    if (d)
        closedir(d);
    if (n > 0) {
        qsort(names, n, sizeof(names[0]), vercmp);
        snprintf(vmlinuz, vcap, "/boot/vmlinuz-%s", names[n - 1]);
        snprintf(moddir, mcap, "/lib/modules/%s", names[n - 1]);
        ok = access(vmlinuz, R_OK) == 0;
        for (unsigned i = 0; ok && i < NMODULES; i++) {
            char p[600];

            snprintf(p, sizeof(p), "%s/%s", moddir, modules[i]);
            ok = access(p, R_OK) == 0;
        }
    }
    for (unsigned i = 0; i < n; i++)
        free(names[i]);
    if (!ok)
        fprintf(stderr,
                "MISSING: no readable /boot/vmlinuz-*-cloud-amd64 with its virtio modules "
                "(scripts/setup.sh installs it: apt-get install linux-image-cloud-amd64)\n");
    return ok;
}

void tg_pattern(uint8_t *buf, uint64_t len, uint32_t seed)
{
    for (uint64_t off = 0; off < len; off += TG_BLOCK) {
        uint64_t k = off / TG_BLOCK, n = len - off < TG_BLOCK ? len - off : TG_BLOCK;
        uint32_t x = seed * 2654435761u ^ (uint32_t)k * 40503u ^ 0x5bd1e995u;

        for (uint64_t i = 0; i < n; i++) {
            x = x * 1103515245u + 12345u;
            buf[off + i] = (uint8_t)(x >> 16);
        }
        char tag[48];
        int t = snprintf(tag, sizeof(tag), "vuf seed %u blk %llu\n", seed, (unsigned long long)k);
        memcpy(buf + off, tag, (size_t)t < n ? (size_t)t : n);
    }
}

/* ---- initramfs (newc cpio, the format the kernel unpacks) ----------------- */

struct cpio {
    FILE *f;
    unsigned ino;
    int err;
};

static void cpio_pad(struct cpio *c)
{
    long pos = ftell(c->f);

    while (pos >= 0 && pos % 4) {
        fputc(0, c->f);
        pos++;
    }
}

static void cpio_entry(struct cpio *c, const char *name, unsigned mode, unsigned rdev_major,
                       unsigned rdev_minor, const void *data, size_t len)
{
    size_t nl = strlen(name) + 1;

    fprintf(c->f, "070701%08X%08X%08X%08X%08X%08X%08zX%08X%08X%08X%08X%08zX%08X", ++c->ino, mode,
            0u, 0u, 1u, 0u, len, 0u, 0u, rdev_major, rdev_minor, nl, 0u);
    fwrite(name, 1, nl, c->f);
    cpio_pad(c);
    if (len && fwrite(data, 1, len, c->f) != len)
        c->err = -EIO;
    cpio_pad(c);
}

static int read_file(const char *path, uint8_t **data, size_t *len)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC), r = 0;

    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0 || !(*data = malloc((size_t)st.st_size + 1))) {
        close(fd);
        return -ENOMEM;
    }
    *len = 0;
    while (*len < (size_t)st.st_size) {
        ssize_t n = read(fd, *data + *len, (size_t)st.st_size - *len);

        if (n <= 0) {
            r = n < 0 ? -errno : -EIO;
            break;
        }
        *len += (size_t)n;
    }
    close(fd);
    if (r < 0)
        free(*data);
    return r;
}

static int cpio_file(struct cpio *c, const char *name, unsigned mode, const char *src)
{
    uint8_t *data = NULL;
    size_t len = 0;
    int r = read_file(src, &data, &len);

    if (r < 0)
        return r;
    cpio_entry(c, name, 0100000 | mode, 0, 0, data, len);
    free(data);
    return 0;
}

/* `writers` concurrent writers, part i pinned to CPU i % cpus, then one
 * read-back. */
static void parallel_writes(FILE *f, const struct tg_blk_workload *w)
{
    unsigned writers = w->writers ? w->writers : 1;
    uint64_t wblocks = w->write_len / TG_BLOCK, part = wblocks / writers;

    fprintf(f, "t0=$(cut -d' ' -f1 /proc/uptime)\nncpu=$(nproc)\npids=\n");
    for (unsigned i = 0; i < writers; i++) {
        uint64_t cnt = i + 1 == writers ? wblocks - part * i : part;

        fprintf(f,
                "taskset -c $((%u %% ncpu)) dd if=/pat.bin of=/dev/vda bs=%u skip=%llu "
                "seek=%llu count=%llu oflag=direct conv=notrunc 2>/tmp/w%u & pids=\"$pids $!\"\n",
                i, TG_BLOCK, (unsigned long long)(part * i),
                (unsigned long long)(w->write_off / TG_BLOCK + part * i), (unsigned long long)cnt,
                i);
    }
    fprintf(f,
            "wres=ok; for p in $pids; do wait $p || wres=fail; done\n"
            "[ $wres = ok ] || cat /tmp/w*\n"
            "say write=$wres\n"
            "say write_s=$(echo \"$(cut -d' ' -f1 /proc/uptime) $t0\" | awk '{print $1-$2}')\n"
            "if dd if=/dev/vda of=/tmp/back bs=%u skip=%llu count=%llu iflag=direct 2>/tmp/err "
            "&& cmp -s /tmp/back /pat.bin; then say readback=ok; "
            "else say readback=bad; cat /tmp/err; fi\n",
            TG_BLOCK, (unsigned long long)(w->write_off / TG_BLOCK), (unsigned long long)wblocks);
}

/* Passes over the write region, TG_CHUNK at a time ("progress=N" after
 * each chunk), each pass read back and compared, until the host has put
 * "VUF-GO" at marker_off (or `passes` passes). A write lost in a pass fails that pass's
 * compare: the next pass cannot hide it. */
static void stream_until_marker(FILE *f, const struct tg_blk_workload *w)
{
    unsigned chunk = TG_CHUNK / TG_BLOCK, nchunks = (unsigned)(w->write_len / TG_CHUNK);

    fprintf(f,
            "wres=ok; rres=ok; pass=0; n=0\n"
            "while [ $pass -lt 200 ]; do\n"
            "  pass=$((pass+1)); c=0\n"
            "  while [ $c -lt %u ]; do\n"
            "    dd if=/pat.bin of=/dev/vda bs=%u skip=$((c*%u)) seek=$((%llu+c*%u)) count=%u "
            "oflag=direct conv=notrunc 2>/tmp/w || { wres=fail; cat /tmp/w; }\n"
            "    c=$((c+1)); n=$((n+1)); say progress=$n\n"
            "  done\n"
            "  dd if=/dev/vda of=/tmp/back bs=%u skip=%llu count=%llu iflag=direct 2>/tmp/err "
            "&& cmp -s /tmp/back /pat.bin || { rres=bad; say bad_pass=$pass; }\n"
            "  say pass=$pass\n",
            nchunks, TG_BLOCK, chunk, (unsigned long long)(w->write_off / TG_BLOCK), chunk, chunk,
            TG_BLOCK, (unsigned long long)(w->write_off / TG_BLOCK),
            (unsigned long long)(w->write_len / TG_BLOCK));
    if (w->marker_len)
        fprintf(f,
                "  dd if=/dev/vda bs=%u skip=%llu count=1 iflag=direct 2>/dev/null | "
                "grep -q VUF-GO && break\n",
                TG_BLOCK, (unsigned long long)(w->marker_off / TG_BLOCK));
    else
        fprintf(f, "  [ $pass -ge %u ] && break\n", w->passes);
    fprintf(f, "done\n"
               "say write=$wres\nsay readback=$rres\n");
}

/* The /init script. Every fact is one "VUF-RESULT key=value" line; the
 * values the tests compare are exact ("ok", counts). O_DIRECT everywhere:
 * the bytes must cross the virtqueue, not stop in the guest's page cache. */
static char *init_script(const struct tg_blk_workload *w)
{
    char *s = NULL;
    size_t sz = 0;
    FILE *f = open_memstream(&s, &sz);

    if (!f)
        return NULL;
    fprintf(f, "#!/bin/busybox sh\n"
               "/bin/busybox mkdir -p /proc /sys /dev /tmp\n"
               "/bin/busybox mount -t proc proc /proc\n"
               "/bin/busybox mount -t sysfs sys /sys\n"
               "/bin/busybox mount -t devtmpfs dev /dev\n"
               "/bin/busybox --install -s /bin\n"
               "export PATH=/bin\n"
               "say() { echo \"VUF-RESULT $*\"; }\n"
               "say boot=ok\n"
               "mods=ok\n");
    for (unsigned i = 0; i < NMODULES; i++) {
        const char *b = strrchr(modules[i], '/') + 1;

        fprintf(f, "insmod /lib/modules/%s || mods=%s\n", b, b);
    }
    fprintf(f, "say modules=$mods\n"
               "i=0; while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done\n"
               "if [ ! -b /dev/vda ]; then say vda=absent; poweroff -f; fi\n"
               "say vda=present\n"
               "say sectors=$(cat /sys/block/vda/size)\n"
               "say hctx=$(ls /sys/block/vda/mq | wc -l)\n"
               "say cpus=$(nproc)\n");
    if (w->pre_len)
        fprintf(f,
                "if dd if=/dev/vda of=/tmp/pre bs=%u skip=%llu count=%llu iflag=direct "
                "2>/tmp/err && cmp -s /tmp/pre /pre.bin; then say preread=ok; "
                "else say preread=bad; cat /tmp/err; fi\n",
                TG_BLOCK, (unsigned long long)(w->pre_off / TG_BLOCK),
                (unsigned long long)(w->pre_len / TG_BLOCK));
    if (w->marker_len || w->passes)
        stream_until_marker(f, w);
    else
        parallel_writes(f, w);
    fprintf(f, "mount -t debugfs none /sys/kernel/debug 2>/dev/null\n"
               "for h in /sys/kernel/debug/block/vda/hctx*; do "
               "say ${h##*/}_run=$(cat $h/run); done\n"
               "if dmesg | grep -qi 'I/O error'; then say ioerr=yes; else say ioerr=none; fi\n"
               "say done=ok\n"
               "poweroff -f\n");
    if (fclose(f) != 0) {
        free(s);
        return NULL;
    }
    return s;
}

int tg_build_initramfs(const char *path, const char *moddir, const struct tg_blk_workload *w)
{
    static const char *const dirs[] = {"bin", "lib", "lib/modules", "proc", "sys", "dev", "tmp"};
    struct cpio c = {.f = fopen(path, "we")};
    uint8_t *pat;
    char *init;
    int r = 0;

    if (!c.f)
        return -errno;
    init = init_script(w);
    pat = malloc(w->write_len + w->pre_len + 1);
    if (!init || !pat) {
        r = -ENOMEM;
        goto out;
    }
    for (unsigned i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++)
        cpio_entry(&c, dirs[i], 040755, 0, 0, NULL, 0);
    /* The kernel opens /dev/console for init's stdio before /init mounts
     * devtmpfs. */
    cpio_entry(&c, "dev/console", 020600, 5, 1, NULL, 0);
    cpio_entry(&c, "init", 0100755, 0, 0, init, strlen(init));
    r = cpio_file(&c, "bin/busybox", 0755, TG_BUSYBOX);
    for (unsigned i = 0; r == 0 && i < NMODULES; i++) {
        char src[600], dst[128];

        snprintf(src, sizeof(src), "%s/%s", moddir, modules[i]);
        snprintf(dst, sizeof(dst), "lib/modules/%s", strrchr(modules[i], '/') + 1);
        r = cpio_file(&c, dst, 0644, src);
    }
    tg_pattern(pat, w->write_len, w->write_seed);
    cpio_entry(&c, "pat.bin", 0100644, 0, 0, pat, w->write_len);
    if (w->pre_len) {
        tg_pattern(pat, w->pre_len, w->pre_seed);
        cpio_entry(&c, "pre.bin", 0100644, 0, 0, pat, w->pre_len);
    }
    cpio_entry(&c, "TRAILER!!!", 0, 0, 0, NULL, 0);
    if (r == 0)
        r = c.err;
out:
    if (fclose(c.f) != 0 && r == 0)
        r = -EIO;
    free(init);
    free(pat);
    return r;
}

/* ---- QEMU ----------------------------------------------------------------- */

int tg_vm_start(struct tg_vm *vm, const char *vmlinuz, const char *initrd, const char *sock,
                unsigned num_queues, unsigned cpus, const char *log)
{
    char chardev[600], device[128], smp[16], deadline[16];
    /* timeout(1) as well as our own deadline: if the test process is
     * SIGKILLed, nothing else would stop a hung guest. */
    char *argv[] = {"/usr/bin/timeout", "-s", "KILL", deadline, TG_QEMU, "-no-user-config",
                    "-nodefaults", "-accel", "tcg,thread=multi", "-M", "q35,memory-backend=mem",
                    "-cpu", "max", "-smp", smp, "-m", "256M", "-object",
                    /* vhost-user needs guest memory the back-end can map. */
                    "memory-backend-memfd,id=mem,size=256M,share=on", "-chardev", chardev,
                    "-device", device, "-display", "none", "-serial", "stdio", "-no-reboot",
                    "-kernel", (char *)vmlinuz, "-initrd", (char *)initrd, "-append",
                    "console=ttyS0 quiet panic=-1", NULL};

    snprintf(chardev, sizeof(chardev), "socket,id=c0,path=%s", sock);
    snprintf(device, sizeof(device), "vhost-user-blk-pci,chardev=c0,num-queues=%u", num_queues);
    snprintf(smp, sizeof(smp), "%u", cpus ? cpus : 1);
    snprintf(deadline, sizeof(deadline), "%d", TG_DEADLINE_MS / 1000 + 5);
    vm->start_ms = tu_now_ms();
    vm->elapsed_ms = -1;
    return tu_spawn(&vm->proc, argv, log);
}

int tg_vm_wait(struct tg_vm *vm, int deadline_ms)
{
    int64_t end = tu_now_ms() + deadline_ms;

    while (vm->proc.pid > 0) {
        siginfo_t si = {0};

        /* WNOWAIT: tu_stop() does the reaping, so testutil forgets the pid. */
        if (waitid(P_PID, (id_t)vm->proc.pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
            si.si_pid == vm->proc.pid) {
            vm->elapsed_ms = (long)(tu_now_ms() - vm->start_ms);
            return tu_stop(&vm->proc);
        }
        if (tu_now_ms() >= end) {
            fprintf(stderr, "guest: QEMU still running after %d ms: killed\n", deadline_ms);
            kill(-vm->proc.pid, SIGKILL);
            tu_stop(&vm->proc);
            return -ETIMEDOUT;
        }
        tu_sleep_ms(20); /* polling the exit condition */
    }
    return -ECHILD;
}

bool tg_result(const char *log, const char *key, char *val, size_t cap)
{
    FILE *f = fopen(log, "re");
    char line[1024], want[128];
    bool found = false;

    if (!f)
        return false;
    snprintf(want, sizeof(want), "VUF-RESULT %s=", key);
    while (fgets(line, sizeof(line), f)) {
        char *p = strstr(line, want);

        if (!p)
            continue;
        p += strlen(want);
        p[strcspn(p, "\r\n")] = '\0';
        snprintf(val, cap, "%s", p);
        found = true;
    }
    fclose(f);
    return found;
}

void tg_dump(const char *log)
{
    FILE *f = fopen(log, "re");
    char line[1024];

    fprintf(stderr, "---- guest log %s ----\n", log);
    while (f && fgets(line, sizeof(line), f))
        fputs(line, stderr);
    if (f)
        fclose(f);
    fprintf(stderr, "---- end of guest log ----\n");
}

/* ---- assertions ----------------------------------------------------------- */

static void expect(const char *log, const char *key, const char *want)
{
    char got[256] = "";

    if (!tg_result(log, key, got, sizeof(got)) || strcmp(got, want) != 0) {
        tg_dump(log);
        fprintf(stderr, "guest result %s: want '%s', got '%s'\n", key, want, got);
        fail();
    }
}

void tg_assert_blk_results(const char *log, const struct tg_blk_workload *w, unsigned nq,
                           unsigned cpus, uint64_t sectors)
{
    char v[64];

    expect(log, "boot", "ok");
    expect(log, "modules", "ok");
    expect(log, "vda", "present");
    snprintf(v, sizeof(v), "%llu", (unsigned long long)sectors);
    expect(log, "sectors", v);
    snprintf(v, sizeof(v), "%u", nq);
    expect(log, "hctx", v);
    snprintf(v, sizeof(v), "%u", cpus ? cpus : 1);
    expect(log, "cpus", v);
    if (w->pre_len)
        expect(log, "preread", "ok");
    expect(log, "write", "ok");
    expect(log, "readback", "ok");
    expect(log, "ioerr", "none");
    expect(log, "done", "ok");
    if ((w->writers ? w->writers : 1) >= nq && (cpus ? cpus : 1) >= nq) {
        for (unsigned q = 0; q < nq; q++) {
            char key[32];

            snprintf(key, sizeof(key), "hctx%u_run", q);
            if (!tg_result(log, key, v, sizeof(v)) || strtoull(v, NULL, 10) == 0) {
                tg_dump(log);
                fprintf(stderr, "guest result %s: want > 0, got '%s'\n", key, v);
                fail();
            }
        }
    }
}

static void file_region(const char *disk, uint64_t off, uint64_t len, uint8_t *buf, bool write)
{
    int fd = open(disk, (write ? O_WRONLY : O_RDONLY) | O_CLOEXEC);
    ssize_t n;

    assert_true(fd >= 0);
    n = write ? pwrite(fd, buf, (size_t)len, (off_t)off) : pread(fd, buf, (size_t)len, (off_t)off);
    assert_int_equal(n, (ssize_t)len);
    close(fd);
}

void tg_prefill_disk(const char *disk, const struct tg_blk_workload *w)
{
    uint8_t *buf = malloc(w->pre_len + 1);

    assert_non_null(buf);
    tg_pattern(buf, w->pre_len, w->pre_seed);
    file_region(disk, w->pre_off, w->pre_len, buf, true);
    free(buf);
}

static void check_region(const char *disk, uint64_t off, uint64_t len, uint32_t seed)
{
    uint8_t *want = malloc(len + 1), *got = malloc(len + 1);

    assert_non_null(want);
    assert_non_null(got);
    tg_pattern(want, len, seed);
    file_region(disk, off, len, got, false);
    for (uint64_t b = 0; b < len; b += TG_BLOCK) {
        if (memcmp(want + b, got + b, TG_BLOCK) != 0) {
            fprintf(stderr, "disk %s: block at offset %llu (seed %u) differs\n", disk,
                    (unsigned long long)(off + b), seed);
            fail();
        }
    }
    free(want);
    free(got);
}

void tg_write_marker(const char *disk, const struct tg_blk_workload *w)
{
    uint8_t blk[TG_BLOCK] = "VUF-GO\n";

    file_region(disk, w->marker_off, TG_BLOCK, blk, true);
}

void tg_assert_disk(const char *disk, const struct tg_blk_workload *w)
{
    check_region(disk, w->write_off, w->write_len, w->write_seed);
    if (w->pre_len)
        check_region(disk, w->pre_off, w->pre_len, w->pre_seed);
}

void tg_maybe_skip(const char *tag)
{
    const char *want = getenv("VUF_GUEST_CASES");

    if (want && *want && !strstr(want, tag)) {
        fprintf(stderr, "guest: case '%s' not in VUF_GUEST_CASES=%s: skipped\n", tag, want);
        skip();
    }
}
