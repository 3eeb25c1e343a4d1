/* Power-loss simulator: an LD_PRELOAD library that records what fsync made durable.
 *
 * Model ("only fsynced bytes survive"): fsync/fdatasync of a regular file under
 * $PCUT_ROOT copies the file's current bytes into $PCUT_SHADOW; fsync of a directory
 * records its current entries (name -> inode, type) as that directory's durable listing.
 * Shadow entries are keyed by (dev, inode, birth time), so a reused inode number never
 * inherits an older file's bytes. Each shadow write is a temp file renamed into place
 * before the intercepted call returns, so a SIGKILL at any moment leaves a consistent
 * image. Every intercepted sync is also appended to $PCUT_SHADOW/events.log as
 * "<seq-free line>: <pid> <tid> <call> <kind> <path>" for order checks.
 * With $PCUT_KILL_AT=N the process SIGKILLs itself right after recording its N-th event,
 * so a test can cut the power exactly between any two fsyncs; with $PCUT_KILL_MATCH=suffix
 * only events on paths ending in suffix count (cut right after the N-th "_versions" fsync).
 * Calls outside the root (or with the env unset) go straight to libc.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char root[PATH_MAX];
static char shadow[PATH_MAX];
static int configured = -1; /* -1 unknown, 0 off, 1 on */
static unsigned long tmp_counter;
static long events_seen;
static long kill_at = -1; /* $PCUT_KILL_AT: SIGKILL ourselves right after recording that event */
static const char *kill_match; /* $PCUT_KILL_MATCH: count only events whose path ends so */

static void configure(void) {
    if (configured >= 0) return;
    const char *r = getenv("PCUT_ROOT"), *s = getenv("PCUT_SHADOW");
    const char *k = getenv("PCUT_KILL_AT");
    if (k) kill_at = atol(k);
    kill_match = getenv("PCUT_KILL_MATCH");
    configured = 0;
    if (!r || !s || !realpath(r, root) || !realpath(s, shadow)) return;
    configured = 1;
}

/* birth time as one number, or 0 when the filesystem does not report it */
static long long btime_at(int dirfd, const char *name, int flags) {
    struct statx sx;
    if (statx(dirfd, name, flags, STATX_BTIME | STATX_INO, &sx) != 0) return -1;
    if (!(sx.stx_mask & STATX_BTIME)) return 0;
    return (long long)sx.stx_btime.tv_sec * 1000000000LL + sx.stx_btime.tv_nsec;
}

static int fd_path(int fd, char *out) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, PATH_MAX - 1);
    if (n < 0) return -1;
    out[n] = 0;
    return 0;
}

static int under_root(const char *path) {
    size_t n = strlen(root);
    return strncmp(path, root, n) == 0 && (path[n] == 0 || path[n] == '/');
}

static int write_all(int fd, const char *buf, size_t len) {
    while (len) {
        ssize_t w = write(fd, buf, len);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        buf += w; len -= (size_t)w;
    }
    return 0;
}

/* create a temp file in the shadow dir; its name is written to tmp */
static int open_tmp(char *tmp) {
    snprintf(tmp, PATH_MAX, "%s/tmp.%d.%lu", shadow, getpid(), ++tmp_counter);
    return open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
}

static void log_event(const char *call, const char *kind, const char *path) {
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/events.log", shadow);
    int fd = open(p, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) return;
    char line[PATH_MAX + 128];
    int n = snprintf(line, sizeof line, "%d %ld %s %s %s\n", getpid(), (long)syscall(SYS_gettid), call, kind, path);
    write_all(fd, line, (size_t)n);
    close(fd);
}

static void save_file(int fd, const struct stat *st, long long bt) {
    char src[64], tmp[PATH_MAX], dst[PATH_MAX];
    snprintf(src, sizeof src, "/proc/self/fd/%d", fd);
    int in = open(src, O_RDONLY); /* the caller's fd may be write-only */
    if (in < 0) return;
    int out = open_tmp(tmp);
    if (out < 0) { close(in); return; }
    char buf[1 << 16];
    off_t off = 0;
    for (;;) {
        ssize_t r = pread(in, buf, sizeof buf, off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        write_all(out, buf, (size_t)r);
        off += r;
    }
    close(in);
    close(out);
    snprintf(dst, sizeof dst, "%s/f_%lu_%lu_%lld", shadow, (unsigned long)st->st_dev, (unsigned long)st->st_ino, bt);
    rename(tmp, dst);
}

/* listing lines: "<type> <ino> <btime> <name>\n" with type f (file), d (dir), o (other) */
static void save_dir(int fd, const struct stat *st, long long bt) {
    char tmp[PATH_MAX], dst[PATH_MAX];
    int dfd = openat(fd, ".", O_RDONLY | O_DIRECTORY);
    if (dfd < 0) return;
    DIR *d = fdopendir(dfd);
    if (!d) { close(dfd); return; }
    int out = open_tmp(tmp);
    if (out < 0) { closedir(d); return; }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        struct stat es;
        if (fstatat(dirfd(d), e->d_name, &es, AT_SYMLINK_NOFOLLOW) != 0) continue;
        char type = S_ISREG(es.st_mode) ? 'f' : S_ISDIR(es.st_mode) ? 'd' : 'o';
        long long ebt = btime_at(dirfd(d), e->d_name, AT_SYMLINK_NOFOLLOW);
        char line[PATH_MAX + 96];
        int n = snprintf(line, sizeof line, "%c %lu %lld %s\n", type, (unsigned long)es.st_ino, ebt, e->d_name);
        write_all(out, line, (size_t)n);
    }
    closedir(d);
    close(out);
    snprintf(dst, sizeof dst, "%s/d_%lu_%lu_%lld", shadow, (unsigned long)st->st_dev, (unsigned long)st->st_ino, bt);
    rename(tmp, dst);
}

static void record(int fd, const char *call) {
    configure();
    if (configured != 1) return;
    char path[PATH_MAX];
    struct stat st;
    if (fd_path(fd, path) != 0 || !under_root(path) || fstat(fd, &st) != 0) return;
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) return;
    int saved = errno;
    pthread_mutex_lock(&mu);
    char lockp[PATH_MAX];
    snprintf(lockp, sizeof lockp, "%s/lock", shadow);
    int lk = open(lockp, O_RDWR | O_CREAT, 0644);
    if (lk >= 0) flock(lk, LOCK_EX);
    long long bt = btime_at(fd, "", AT_EMPTY_PATH);
    if (S_ISREG(st.st_mode)) save_file(fd, &st, bt);
    else save_dir(fd, &st, bt);
    log_event(call, S_ISREG(st.st_mode) ? "file" : "dir", path);
    if (lk >= 0) close(lk);
    size_t pl = strlen(path), ml = kill_match ? strlen(kill_match) : 0;
    if (!kill_match || (pl >= ml && !strcmp(path + pl - ml, kill_match)))
        if (++events_seen == kill_at) kill(getpid(), SIGKILL); /* the power cut, between two fsyncs */
    pthread_mutex_unlock(&mu);
    errno = saved;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int rc = real(fd);
    if (rc == 0) record(fd, "fsync");
    return rc;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int rc = real(fd);
    if (rc == 0) record(fd, "fdatasync");
    return rc;
}
