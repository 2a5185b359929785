/*
 * A disk whose flushes fail, for tests: preloaded into a process
 * (LD_PRELOAD), it makes fsync, fdatasync, syncfs and sync_file_range fail
 * with EIO while the file named by FAILSYNC_TRIGGER exists, and behave
 * normally otherwise. Data written before a failing flush may or may not
 * have reached the disk, as on a real device that reports an I/O error.
 * With FAILSYNC_MODE=hang, a flush blocks while the trigger exists instead
 * (a disk that stops answering), then goes on normally.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int triggered(void) {
    const char *trigger = getenv("FAILSYNC_TRIGGER");
    return trigger != NULL && access(trigger, F_OK) == 0;
}

/* Whether this flush must fail; in hang mode, waits out the trigger. */
static int tripped(void) {
    const char *mode = getenv("FAILSYNC_MODE");
    if (mode != NULL && strcmp(mode, "hang") == 0) {
        while (triggered()) usleep(50000);
        return 0;
    }
    return triggered();
}

int fsync(int fd) {
    static int (*real)(int);
    if (tripped()) {
        errno = EIO;
        return -1;
    }
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (tripped()) {
        errno = EIO;
        return -1;
    }
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}

int syncfs(int fd) {
    static int (*real)(int);
    if (tripped()) {
        errno = EIO;
        return -1;
    }
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "syncfs");
    return real(fd);
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags) {
    static int (*real)(int, off_t, off_t, unsigned int);
    if (tripped()) {
        errno = EIO;
        return -1;
    }
    if (!real) real = (int (*)(int, off_t, off_t, unsigned int))dlsym(RTLD_NEXT, "sync_file_range");
    return real(fd, offset, nbytes, flags);
}
