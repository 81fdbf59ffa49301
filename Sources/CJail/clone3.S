// long cjail_clone3(struct clone_args *args, size_t size, int (*fn)(void *), void *arg)
//
// clone3 with a caller-provided stack: the child starts on that stack with no
// frame of ours under it, so it must call fn straight away, in assembly.
// Returns the child's pid (or -errno) in the parent; the child exits with fn's result.
#if defined(__x86_64__)
    .text
    .globl cjail_clone3
    .type cjail_clone3, @function
cjail_clone3:
    mov %rdx, %r8          /* fn  (r8, r9 survive syscall) */
    mov %rcx, %r9          /* arg */
    mov $435, %eax         /* SYS_clone3 */
    syscall
    test %rax, %rax
    jnz 1f
    xor %ebp, %ebp         /* child: outermost frame */
    mov %r9, %rdi
    call *%r8
    mov %rax, %rdi
    mov $60, %eax          /* SYS_exit */
    syscall
    hlt
1:  ret
    .size cjail_clone3, .-cjail_clone3
#elif defined(__aarch64__)
    .text
    .globl cjail_clone3
    .type cjail_clone3, %function
cjail_clone3:
    mov x10, x2            /* fn  (only x0 changes across svc) */
    mov x11, x3            /* arg */
    mov x8, #435           /* SYS_clone3 */
    svc #0
    cbnz x0, 1f
    mov x29, xzr           /* child: outermost frame */
    mov x30, xzr
    mov x0, x11
    blr x10
    mov x8, #93            /* SYS_exit */
    svc #0
    brk #0
1:  ret
    .size cjail_clone3, .-cjail_clone3
#endif
    .section .note.GNU-stack,"",%progbits
