/* How the process's OpenMP threads wait.
 *
 * oneDNN and FAISS run on libgomp's threads, Debian's OpenBLAS on pthreads
 * of its own, and geolocd runs several such teams at once (the inference
 * engine's, each search thread's fine stage). By default an idle libgomp
 * thread spins for a while before it sleeps, on a core another team or
 * another process needs. Measured on 2 cores: `geoloc eval` of a flight ran
 * 2.3 to 2.9 times longer while one other such process ran beside it (it
 * spins: 31-40 s; it sleeps: 13-14 s), and the engine alone swung between
 * 10 and 1600 frames/s as other processes came and went (bench/README.md).
 * On an idle machine spinning saved under 10%. */
#ifndef GL_CORE_OMP_H
#define GL_CORE_OMP_H

/* Call first thing in main. Unless OMP_WAIT_POLICY is set (a user's value
 * is kept), sets it to passive and runs the program again with the same
 * arguments: libgomp reads it only when it is loaded, before main. Returns
 * only when OMP_WAIT_POLICY was set already, or when the program cannot be
 * run again (no /proc): then it goes on with spinning threads, slower. */
void gl_omp_wait_passive(char **argv);

#endif
