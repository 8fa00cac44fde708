// bench_search: exact search against approximate FAISS indexes, measured in
// one run on the same data so that the ratios mean something.
//
// Database: N random 512-d descriptors, L2-normalised (Gaussian draws, so
// uniform on the sphere). Queries: random unit vectors too (--queries
// random), or noisy copies of database vectors (--queries near, cosine about
// 0.8 to their source, closer to what a frame does to its tile). Indexes:
//   Flat          IndexFlatIP: the exact answer and the peer of every ratio
//   IVF1024,PQ64  1024 lists, 64-byte PQ codes, trained on --train (65536)
//                 database vectors, nprobe --nprobe (16)
//   HNSW32        graph, M = 32, efConstruction --efc (40), efSearch --ef
//                 (64); built only up to --hnsw-max vectors (default 100k).
//                 Debian's libfaiss has scalar distance kernels, which make
//                 an HNSW32 build on 100k random 512-d vectors take 18
//                 minutes on 2 cores. By default the graph therefore scores
//                 with a vectorised L2 kernel of this file ("HNSW32 vecL2",
//                 what a FAISS built for AVX2 does); --faiss-kernels keeps
//                 FAISS's own ("HNSW32").
// HNSW and IVF-PQ use the L2 metric: on unit vectors |q - x|^2 = 2 - 2 q.x, so
// the ranking is the inner-product ranking, and L2 is those indexes' best
// tested path. Each index is measured at query batch 1 and 32: queries per
// second and recall@10 against the exact top-10 of Flat (|found & true| / 10,
// averaged over the queries measured).
//
// Usage: bench_search [--quick] [--sizes 100000,1000000] [--nq 256]
//        [--budget 3] [--index IVF1024,PQ64/HNSW32] [--faiss-kernels] [--ef 64] [--efc 40]
//        [--hnsw-max 100000] [--nprobe 16]
//        [--train 65536] [--queries random|near] [--threads T] [--seed S]
// --quick measures 100k only. See bench/README.md.
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IVFlib.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/impl/DistanceComputer.h>
#include <faiss/index_factory.h>
#include <faiss/utils/distances.h>
#include <faiss/utils/random.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

extern "C" {
#include "core/omp.h"
}

namespace {

// FAISS 1.7.3 (Debian 12) keeps idx_t inside Index; later versions move it
// to the namespace. This spelling works with both.
using idx_t = faiss::Index::idx_t;

constexpr int kDim = 512;
constexpr int kK = 10;

struct Options {
  std::vector<size_t> sizes{100000, 1000000};
  size_t nq = 256;
  double budget_s = 3.0;
  int ef = 64;
  int efc = 40;
  size_t hnsw_max = 100000;
  int nprobe = 16;
  size_t train = 65536;
  bool near = false;
  bool faiss_kernels = false;
  // Slowest build last, so that the rows before it are printed early.
  std::vector<std::string> specs{"Flat", "IVF1024,PQ64", "HNSW32"};
  int threads = 0;
  int64_t seed = 1234;
};

struct Row {
  size_t n;
  std::string index;
  int batch;
  double build_s;
  double qps;
  double ratio;
  double recall;
  size_t measured;
};

double now_s() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

[[noreturn]] void usage(const char *why) {
  std::fprintf(stderr,
               "bench_search: %s\n"
               "usage: bench_search [--quick] [--sizes N,N,...] [--nq N] [--budget S]\n"
               "                    [--index IVF1024,PQ64/HNSW32] [--faiss-kernels]\n"
               "                    [--ef N] [--efc N] [--hnsw-max N] [--nprobe N] [--train N]\n"
               "                    [--queries random|near]\n"
               "                    [--threads T] [--seed S]\n",
               why);
  std::exit(2);
}

size_t parse_size(const char *s) {
  char *end = nullptr;
  unsigned long long v = std::strtoull(s, &end, 10);
  if (!s[0] || *end || v == 0)
    usage("expected a positive integer");
  return static_cast<size_t>(v);
}

Options parse(int argc, char **argv) {
  Options o;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto value = [&]() -> const char * {
      if (i + 1 >= argc)
        usage(("missing value after " + a).c_str());
      return argv[++i];
    };
    if (a == "--quick") {
      o.sizes = {100000};
    } else if (a == "--sizes") {
      o.sizes.clear();
      std::string list = value();
      size_t at = 0;
      while (at <= list.size()) {
        size_t comma = list.find(',', at);
        if (comma == std::string::npos)
          comma = list.size();
        o.sizes.push_back(parse_size(list.substr(at, comma - at).c_str()));
        at = comma + 1;
      }
    } else if (a == "--nq") {
      o.nq = parse_size(value());
    } else if (a == "--budget") {
      o.budget_s = std::atof(value());
      if (!(o.budget_s > 0))
        usage("--budget must be > 0");
    } else if (a == "--ef") {
      o.ef = static_cast<int>(parse_size(value()));
    } else if (a == "--index") {
      // Flat is always measured: it is the truth and the peer of the ratios.
      o.specs = {"Flat"};
      std::string list = value();
      for (const char *spec : {"IVF1024,PQ64", "HNSW32"})
        if (list.find(spec) != std::string::npos)
          o.specs.push_back(spec);
    } else if (a == "--faiss-kernels") {
      o.faiss_kernels = true;
    } else if (a == "--efc") {
      o.efc = static_cast<int>(parse_size(value()));
    } else if (a == "--hnsw-max") {
      o.hnsw_max = parse_size(value());
    } else if (a == "--nprobe") {
      o.nprobe = static_cast<int>(parse_size(value()));
    } else if (a == "--train") {
      o.train = parse_size(value());
    } else if (a == "--queries") {
      std::string q = value();
      if (q != "random" && q != "near")
        usage("--queries is random or near");
      o.near = q == "near";
    } else if (a == "--threads") {
      o.threads = static_cast<int>(parse_size(value()));
    } else if (a == "--seed") {
      o.seed = static_cast<int64_t>(parse_size(value()));
    } else if (a == "-h" || a == "--help") {
      usage("help");
    } else {
      usage(("unknown argument " + a).c_str());
    }
  }
  return o;
}

// Unit vectors: Gaussian draws normalised, i.e. uniform on the sphere.
std::vector<float> random_unit(size_t n, int64_t seed) {
  std::vector<float> x(n * kDim);
  faiss::float_randn(x.data(), x.size(), seed);
  faiss::fvec_renorm_L2(kDim, n, x.data());
  return x;
}

// Queries near database vectors: x + g with |g| = 0.75 (g random, nearly
// orthogonal to x in 512-d), renormalised: cosine 1/sqrt(1 + 0.75^2) = 0.8.
std::vector<float> near_queries(const std::vector<float> &db, size_t n_db, size_t nq,
                                int64_t seed) {
  std::vector<float> q = random_unit(nq, seed);
  std::vector<int64_t> pick(nq);
  faiss::int64_rand_max(pick.data(), nq, n_db, seed + 1);
  for (size_t i = 0; i < nq; i++) {
    const float *src = &db[static_cast<size_t>(pick[i]) * kDim];
    float *dst = &q[i * kDim];
    for (int j = 0; j < kDim; j++)
      dst[j] = src[j] + 0.75f * dst[j];
  }
  faiss::fvec_renorm_L2(kDim, nq, q.data());
  return q;
}

// Searches the queries in batches until all are done or the budget is
// spent (at least one batch), so that a slow index costs seconds, not
// minutes. Fills labels for the queries measured and returns their count.
size_t measure(const faiss::Index &index, const std::vector<float> &q, size_t nq, int batch,
               double budget_s, std::vector<idx_t> &labels, double &secs) {
  std::vector<float> dist(static_cast<size_t>(batch) * kK);
  labels.assign(nq * kK, -1);
  size_t done = 0;
  double t0 = now_s(), t = t0;
  while (done < nq && (done == 0 || t - t0 < budget_s)) {
    size_t b = std::min(static_cast<size_t>(batch), nq - done);
    index.search(static_cast<idx_t>(b), &q[done * kDim], kK, dist.data(), &labels[done * kK]);
    done += b;
    t = now_s();
  }
  secs = t - t0;
  return done;
}

double recall(const std::vector<idx_t> &got, const std::vector<idx_t> &truth, size_t nq) {
  size_t hit = 0;
  for (size_t i = 0; i < nq; i++) {
    const idx_t *g = &got[i * kK], *t = &truth[i * kK];
    for (int a = 0; a < kK; a++)
      for (int b = 0; b < kK; b++)
        if (g[a] == t[b] && g[a] >= 0) {
          hit++;
          break;
        }
  }
  return nq ? static_cast<double>(hit) / static_cast<double>(nq * kK) : 0.0;
}

// Squared L2 distance, vectorised: the reduction is declared reorderable
// (omp simd), and an AVX2+FMA clone is picked at load time where the CPU has
// it. FAISS's fvec_L2sqr() in Debian's build adds one float at a time.
__attribute__((target_clones("arch=x86-64-v3", "default"))) float l2sqr(const float *a,
                                                                        const float *b, size_t d) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (size_t i = 0; i < d; i++) {
    float t = a[i] - b[i];
    acc += t * t;
  }
  return acc;
}

struct VecL2Dis : faiss::FlatCodesDistanceComputer {
  size_t d;
  const float *base;
  const float *q = nullptr;

  explicit VecL2Dis(const faiss::IndexFlat &s)
      : faiss::FlatCodesDistanceComputer(s.codes.data(), s.code_size), d(static_cast<size_t>(s.d)),
        base(s.get_xb()) {}
  void set_query(const float *x) override { q = x; }
  float distance_to_code(const uint8_t *code) override {
    return l2sqr(q, reinterpret_cast<const float *>(code), d);
  }
  float symmetric_dis(idx_t i, idx_t j) override {
    return l2sqr(base + static_cast<size_t>(i) * d, base + static_cast<size_t>(j) * d, d);
  }
};

// HNSW storage that hands the graph the vectorised kernel; everything else
// (graph construction, search, the vectors) is FAISS's.
struct VecFlatL2 : faiss::IndexFlatL2 {
  explicit VecFlatL2(idx_t dim) : faiss::IndexFlatL2(dim) {}
  faiss::FlatCodesDistanceComputer *get_FlatCodesDistanceComputer() const override {
    return new VecL2Dis(*this);
  }
};

std::unique_ptr<faiss::Index> build(const std::string &spec, const std::vector<float> &db, size_t n,
                                    const Options &o, double &build_s) {
  faiss::MetricType metric = spec == "Flat" ? faiss::METRIC_INNER_PRODUCT : faiss::METRIC_L2;
  std::unique_ptr<faiss::Index> index;
  if (spec == "HNSW32" && !o.faiss_kernels) {
    auto *hnsw = new faiss::IndexHNSW(new VecFlatL2(kDim), 32);
    hnsw->own_fields = true;
    index.reset(hnsw);
  } else {
    index.reset(faiss::index_factory(kDim, spec.c_str(), metric));
  }
  // index_factory turns on polysemous training for "PQ64": a simulated
  // annealing that reorders the PQ centroids for Hamming filtering, which
  // search never uses (polysemous_ht stays 0) and which took most of the
  // 513 s the 100k build cost. The index is the same without it.
  if (auto *ivfpq = dynamic_cast<faiss::IndexIVFPQ *>(index.get()))
    ivfpq->do_polysemous_training = false;
  if (auto *hnsw = dynamic_cast<faiss::IndexHNSW *>(index.get()))
    hnsw->hnsw.efConstruction = o.efc;
  double t0 = now_s();
  if (!index->is_trained) {
    // The first vectors are as random as any other sample.
    size_t nt = std::min(o.train, n);
    index->train(static_cast<idx_t>(nt), db.data());
  }
  index->add(static_cast<idx_t>(n), db.data());
  build_s = now_s() - t0;
  if (auto *hnsw = dynamic_cast<faiss::IndexHNSW *>(index.get()))
    hnsw->hnsw.efSearch = o.ef;
  if (auto *ivf = faiss::ivflib::try_extract_index_ivf(index.get()))
    ivf->nprobe = static_cast<size_t>(o.nprobe);
  return index;
}

std::string human(size_t n) {
  char buf[32];
  if (n % 1000000 == 0)
    std::snprintf(buf, sizeof buf, "%zuM", n / 1000000);
  else if (n % 1000 == 0)
    std::snprintf(buf, sizeof buf, "%zuk", n / 1000);
  else
    std::snprintf(buf, sizeof buf, "%zu", n);
  return buf;
}

} // namespace

int main(int argc, char **argv) {
  // FAISS runs its loops on OpenMP threads and Debian's default OpenBLAS
  // runs sgemm on its own pthreads. libgomp's threads spin while they wait,
  // and on 2 cores they starved the BLAS threads: batch-32 Flat search on 10k
  // ran at 190-1000 queries/s instead of 4900. So the program runs again
  // with OMP_WAIT_POLICY=passive unless it is set (src/core/omp.h).
  gl_omp_wait_passive(argv);
  Options o = parse(argc, argv);
  if (o.threads > 0)
    omp_set_num_threads(o.threads);
  const int batches[] = {1, 32};
  std::vector<Row> rows;

  std::printf("bench_search: d=%d k=%d queries=%s nq=%zu budget=%.1fs/measurement threads=%d "
              "OMP_WAIT_POLICY=%s efSearch=%d efConstruction=%d nprobe=%d train=%zu "
              "hnsw-max=%zu\n",
              kDim, kK, o.near ? "near" : "random", o.nq, o.budget_s, omp_get_max_threads(),
              std::getenv("OMP_WAIT_POLICY"), o.ef, o.efc, o.nprobe, o.train, o.hnsw_max);
  std::fflush(stdout);

  for (size_t n : o.sizes) {
    double t0 = now_s();
    std::vector<float> db = random_unit(n, o.seed);
    std::vector<float> q =
        o.near ? near_queries(db, n, o.nq, o.seed + 7) : random_unit(o.nq, o.seed + 7);
    std::vector<idx_t> truth;
    std::printf("N=%s: data %.1fs\n", human(n).c_str(), now_s() - t0);
    std::fflush(stdout);

    double flat_qps[2] = {0, 0};
    for (const std::string &spec : o.specs) {
      double build_s = 0;
      if (spec == "HNSW32" && n > o.hnsw_max) {
        std::printf("N=%s: %s skipped (N > --hnsw-max %zu)\n", human(n).c_str(), spec.c_str(),
                    o.hnsw_max);
        continue;
      }
      std::unique_ptr<faiss::Index> index = build(spec, db, n, o, build_s);
      std::printf("N=%s: %s built in %.1fs\n", human(n).c_str(), spec.c_str(), build_s);
      std::fflush(stdout);
      if (spec == "Flat") {
        // The exact top-10 of every query, in full-size batches (the
        // fastest way to get them), before anything is timed.
        double secs;
        measure(*index, q, o.nq, 32, 1e30, truth, secs);
      }
      auto run = [&](const std::string &label, int bi) {
        std::vector<idx_t> got;
        double secs = 0;
        size_t done = measure(*index, q, o.nq, batches[bi], o.budget_s, got, secs);
        double qps = static_cast<double>(done) / secs;
        if (label == "Flat")
          flat_qps[bi] = qps;
        rows.push_back(Row{n, label, batches[bi], build_s, qps, qps / flat_qps[bi],
                           recall(got, truth, done), done});
        const Row &r = rows.back();
        std::printf("N=%s: %s batch %d: %.*f queries/s, x%.2f Flat, recall@10 %.3f (%zu "
                    "queries)\n",
                    human(n).c_str(), label.c_str(), r.batch, r.qps < 100 ? 1 : 0, r.qps, r.ratio,
                    r.recall, r.measured);
        std::fflush(stdout);
      };
      std::string label = spec;
      if (spec == "HNSW32" && !o.faiss_kernels)
        label += " vecL2";
      for (int bi = 0; bi < 2; bi++)
        run(label, bi);
      if (spec == "Flat") {
        // Below 20 queries FAISS scores with its own fvec_inner_product(),
        // which Debian's build leaves scalar; forcing the BLAS path shows
        // what exact search costs at batch 1 when it is vectorised.
        int saved = faiss::distance_compute_blas_threshold;
        faiss::distance_compute_blas_threshold = 1;
        run("Flat (BLAS at batch 1)", 0);
        faiss::distance_compute_blas_threshold = saved;
      }
    }
  }

  std::printf("\n| N | index | batch | build s | queries/s | x Flat | recall@10 | queries |\n");
  std::printf("|---:|---|---:|---:|---:|---:|---:|---:|\n");
  for (const Row &r : rows)
    std::printf("| %s | %s | %d | %.1f | %.*f | %.2f | %.3f | %zu |\n", human(r.n).c_str(),
                r.index.c_str(), r.batch, r.build_s, r.qps < 100 ? 1 : 0, r.qps, r.ratio, r.recall,
                r.measured);
  return 0;
}
