// The part of FAISS's C API that src/map calls, implemented against the C++
// libfaiss.
//
// Why this file exists: the map module talks to FAISS only through the C API
// headers (faiss/c_api/*.h), as docs/ARCHITECTURE.md section 7 says, but
// Debian ships those headers in libfaiss-dev without the libfaiss_c library
// that implements them. When meson finds a real libfaiss_c it links that and
// skips this file; otherwise this file provides exactly the functions the
// module calls, with the signatures of the headers (which it includes inside
// extern "C", so that any signature drift is a compile error rather than a
// silent C++ overload). Behaviour follows upstream c_api/*.cpp: every
// function that can fail returns 0 or a negative FaissErrorCode and records
// the exception message for faiss_get_last_error(); no exception crosses
// into C.
//
// Keep the list in sync with src/map: a function called there but missing
// here is a link error in builds without libfaiss_c.

#include <cstdio>
#include <exception>
#include <string>

#include <faiss/Index.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVF.h>
#include <faiss/impl/FaissException.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>

extern "C" {
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/MetaIndexes_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>
}

namespace {

// Per thread, like upstream's faiss_last_exception: a failure in one thread
// never shows up as another thread's message.
thread_local std::string last_error;
thread_local bool have_error = false;

int record(const char *what, int code) {
  last_error = what ? what : "unknown error";
  have_error = true;
  return code;
}

faiss::Index *idx(FaissIndex *p) { return reinterpret_cast<faiss::Index *>(p); }
const faiss::Index *idx(const FaissIndex *p) { return reinterpret_cast<const faiss::Index *>(p); }

} // namespace

// Runs body and converts exceptions into upstream's error codes.
#define GL_FAISS_TRY(body)                                                                         \
  try {                                                                                            \
    body;                                                                                          \
    return 0;                                                                                      \
  } catch (faiss::FaissException & e) {                                                            \
    return record(e.what(), FAISS_EXCEPT);                                                         \
  } catch (std::exception & e) {                                                                   \
    return record(e.what(), STD_EXCEPT);                                                           \
  } catch (...) {                                                                                  \
    return record("unknown exception", UNKNOWN_EXCEPT);                                            \
  }

extern "C" {

const char *faiss_get_last_error() { return have_error ? last_error.c_str() : nullptr; }

int faiss_index_factory(FaissIndex **p_index, int d, const char *description,
                        FaissMetricType metric) {
  GL_FAISS_TRY({
    *p_index = reinterpret_cast<FaissIndex *>(
        faiss::index_factory(d, description, static_cast<faiss::MetricType>(metric)));
  })
}

void faiss_Index_free(FaissIndex *obj) { delete idx(obj); }

int faiss_Index_d(const FaissIndex *obj) { return idx(obj)->d; }

int faiss_Index_is_trained(const FaissIndex *obj) { return idx(obj)->is_trained ? 1 : 0; }

idx_t faiss_Index_ntotal(const FaissIndex *obj) { return idx(obj)->ntotal; }

FaissMetricType faiss_Index_metric_type(const FaissIndex *obj) {
  return static_cast<FaissMetricType>(idx(obj)->metric_type);
}

int faiss_Index_train(FaissIndex *index, idx_t n, const float *x) {
  GL_FAISS_TRY(idx(index)->train(n, x))
}

int faiss_Index_add_with_ids(FaissIndex *index, idx_t n, const float *x, const idx_t *xids) {
  GL_FAISS_TRY(idx(index)->add_with_ids(n, x, xids))
}

int faiss_Index_search(const FaissIndex *index, idx_t n, const float *x, idx_t k,
                       float *distances, idx_t *labels) {
  GL_FAISS_TRY(idx(index)->search(n, x, k, distances, labels))
}

int faiss_Index_reconstruct(const FaissIndex *index, idx_t key, float *recons) {
  GL_FAISS_TRY(idx(index)->reconstruct(key, recons))
}

int faiss_IndexIDMap_new(FaissIndexIDMap **p_index, FaissIndex *index) {
  GL_FAISS_TRY({
    *p_index = reinterpret_cast<FaissIndexIDMap *>(new faiss::IndexIDMap(idx(index)));
  })
}

int faiss_IndexIDMap_own_fields(const FaissIndexIDMap *obj) {
  return reinterpret_cast<const faiss::IndexIDMap *>(obj)->own_fields ? 1 : 0;
}

void faiss_IndexIDMap_set_own_fields(FaissIndexIDMap *obj, int own) {
  reinterpret_cast<faiss::IndexIDMap *>(obj)->own_fields = own != 0;
}

FaissIndexIDMap *faiss_IndexIDMap_cast(FaissIndex *index) {
  return reinterpret_cast<FaissIndexIDMap *>(dynamic_cast<faiss::IndexIDMap *>(idx(index)));
}

void faiss_IndexIDMap_id_map(FaissIndexIDMap *index, idx_t **p_id_map, size_t *p_size) {
  auto *m = reinterpret_cast<faiss::IndexIDMap *>(index);
  *p_id_map = m->id_map.data();
  *p_size = m->id_map.size();
}

FaissIndex *faiss_IndexIDMap_sub_index(FaissIndexIDMap *index) {
  return reinterpret_cast<FaissIndex *>(reinterpret_cast<faiss::IndexIDMap *>(index)->index);
}

FaissIndexIVF *faiss_IndexIVF_cast(FaissIndex *index) {
  return reinterpret_cast<FaissIndexIVF *>(dynamic_cast<faiss::IndexIVF *>(idx(index)));
}

size_t faiss_IndexIVF_nlist(const FaissIndexIVF *obj) {
  return reinterpret_cast<const faiss::IndexIVF *>(obj)->nlist;
}

void faiss_IndexIVF_set_nprobe(FaissIndexIVF *obj, size_t nprobe) {
  reinterpret_cast<faiss::IndexIVF *>(obj)->nprobe = nprobe;
}

int faiss_IndexIVF_make_direct_map(FaissIndexIVF *index, int new_maintain_direct_map) {
  GL_FAISS_TRY(
      reinterpret_cast<faiss::IndexIVF *>(index)->make_direct_map(new_maintain_direct_map != 0))
}

int faiss_write_index(const FaissIndex *index, FILE *f) {
  GL_FAISS_TRY(faiss::write_index(idx(index), f))
}

int faiss_read_index(FILE *f, int io_flags, FaissIndex **p_out) {
  GL_FAISS_TRY({ *p_out = reinterpret_cast<FaissIndex *>(faiss::read_index(f, io_flags)); })
}

} // extern "C"
