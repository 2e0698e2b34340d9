// runexp under a torchrun-like launch: 2 processes on 127.0.0.1 with RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR and MASTER_PORT set, Gloo, fp32 on the CPU (issue #17).
// - configs/roma_last5.toml (collect -> RoMA finetune -> evaluate) on 2 ranks: the finetuned routers
//   equal one process's within 1e-5, the evaluation's per-question answers are identical, and only rank 0
//   wrote the run folder (one log, the metrics rows of one process).
// - The collect stage and perplexity on 2 ranks: the same results as one process.
// - A rank killed (or stopped) in the middle of router training: the other exits non-zero within
//   [distributed] timeout_s with a message naming the failed collective; --resume on 2 ranks finishes
//   from the last checkpoint to the routers of an uninterrupted run.
#include "moelab/lib/distributed.h"
#include "moelab/lib/files.h"
#include "moelab/lib/safetensors.h"
#include "test_run.h"

#include <gmock/gmock.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <sstream>
#include <thread>

namespace {

namespace fs = std::filesystem;
using moelab::test::TempDir;
using testing::HasSubstr;

// These tests run Gloo process groups on the CPU; pip's CUDA LibTorch ships no Gloo headers, so a build
// against it has no Gloo group (runexp refuses backend = "gloo" there: config and launch tests cover that).
#define SKIP_WITHOUT_GLOO()                                                                                   \
  if (!moelab::distributed::built_with(moelab::distributed::Backend::gloo))                                 \
  GTEST_SKIP() << "this LibTorch build has no c10d Gloo process group"

// A port no one listens on now (the kernel picks it).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t size = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &size);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// One rank: runexp with the launcher's variables, its output in `log`.
struct Rank {
  pid_t pid = -1;
  fs::path log;
  int status = -1;  // exit status once waited for; -1 while running or when killed by a signal

  std::string output() const { return moelab::read_file(log); }
  // Waits at most `seconds`; false when still running then.
  bool wait(double seconds) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < until) {
      int raw = 0;
      if (::waitpid(pid, &raw, WNOHANG) == pid) {
        status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
        pid = -1;
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  void kill_now() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      wait(30);
    }
  }
};

// Starts `world` runexp ranks with torchrun's variables; `port`: MASTER_PORT (a free one when -1);
// `agent_store`: as under torchrun, whose agent serves the TCPStore (TORCHELASTIC_USE_AGENT_STORE=True).
std::vector<Rank> launch(int world, const std::string& arguments, const fs::path& logs, int port = -1, bool agent_store = false) {
  if (port < 0) port = free_port();
  std::vector<Rank> ranks(static_cast<std::size_t>(world));
  for (int r = 0; r < world; ++r) {
    Rank& rank = ranks[static_cast<std::size_t>(r)];
    rank.log = logs / ("rank" + std::to_string(r) + ".log");
    const std::string command = "exec " + moelab::test::runexp_binary() + " " + arguments + " > " + rank.log.string() + " 2>&1";
    rank.pid = ::fork();
    if (rank.pid == 0) {
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::setenv("OMP_NUM_THREADS", "1", 1);
      if (agent_store) {
        ::setenv("TORCHELASTIC_USE_AGENT_STORE", "True", 1);
        ::setenv("TORCHELASTIC_RESTART_COUNT", "0", 1);
      }
      ::execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
  }
  return ranks;
}

// runexp `file` in one process (one thread) with its runs under `run_dir`.
moelab::test::CommandResult run_alone(const std::string& file, const fs::path& run_dir) {
  return moelab::test::run_command("OMP_NUM_THREADS=1 " + moelab::test::runexp_binary() + " " + file + " --set run_dir=" + run_dir.string());
}

// launch(), then waits for every rank (at most 600 s each), each expected to exit 0.
std::vector<Rank> run_ranks(int world, const std::string& arguments, const fs::path& logs, int port = -1, bool agent_store = false) {
  std::vector<Rank> ranks = launch(world, arguments, logs, port, agent_store);
  for (Rank& rank : ranks) {
    EXPECT_TRUE(rank.wait(600)) << rank.output();
    EXPECT_EQ(rank.status, 0) << rank.output();
  }
  return ranks;
}

fs::path only_run(const fs::path& experiment_dir) {
  std::vector<fs::path> runs;
  for (const auto& entry : fs::directory_iterator(experiment_dir)) runs.push_back(entry.path());
  EXPECT_EQ(runs.size(), 1u) << experiment_dir;
  return runs.at(0);
}

std::map<std::string, torch::Tensor> tensors_of(const fs::path& file) {
  moelab::SafetensorsFile f(file);
  std::map<std::string, torch::Tensor> out;
  for (const auto& name : f.names()) out[name] = f.get(name).to(torch::kFloat64);
  return out;
}

double max_difference(const fs::path& a, const fs::path& b) {
  auto ta = tensors_of(a), tb = tensors_of(b);
  EXPECT_EQ(ta.size(), tb.size());
  double worst = 0;
  for (const auto& [name, t] : ta) {
    EXPECT_TRUE(tb.count(name)) << name;
    if (tb.count(name)) worst = std::max(worst, (t - tb.at(name)).abs().max().item<double>());
  }
  return worst;
}

long long lines_of(const fs::path& file) {
  std::istringstream text(moelab::read_file(file));
  long long n = 0;
  for (std::string line; std::getline(text, line);) ++n;
  return n;
}

TEST(Distributed, ShardRangesAreContiguousInOrderAndCoverEverythingOnce) {
  for (std::size_t n : {0u, 1u, 5u, 7u, 64u})
    for (int world : {1, 2, 3, 8}) {
      std::size_t next = 0;
      for (int r = 0; r < world; ++r) {
        const auto [begin, end] = moelab::distributed::shard_range(n, r, world);
        EXPECT_EQ(begin, next) << n << " " << world << " " << r;
        EXPECT_LE(end - begin, n / static_cast<std::size_t>(world) + 1);
        EXPECT_GE(end - begin, n / static_cast<std::size_t>(world));
        next = end;
      }
      EXPECT_EQ(next, n);
    }
  // Without the launcher's variables: one process, nothing to share.
  EXPECT_FALSE(moelab::distributed::active());
  EXPECT_EQ(moelab::distributed::world_size(), 1);
  EXPECT_EQ(moelab::distributed::gather_list(nlohmann::json::array({1, 2}), "test"), nlohmann::json::array({1, 2}));
}

// [distributed] is checked as every table is (an unknown key or a wrong choice names the file and line),
// shown by --dry-run with its defaults, and left out of the run's config.resolved.toml.
TEST(Distributed, TableIsCheckedAndShownByDryRun) {
  TempDir dir;
  const std::string base = "stages = []\n[model]\npath = \"builtin:tiny-olmoe\"\ndevice = \"cpu\"\n";
  auto shown = moelab::test::run_command(moelab::test::runexp_binary() + " " + dir.write("a.toml", base + "[distributed]\nbackend = \"gloo\"\n").string() +
                                         " --dry-run");
  ASSERT_EQ(shown.status, 0) << shown.output;
  EXPECT_THAT(shown.output, HasSubstr("[distributed]\nbackend = 'gloo'\ntimeout_s = 600.0"));
  auto typo = moelab::test::run_command(moelab::test::runexp_binary() + " " + dir.write("b.toml", base + "[distributed]\nbackned = \"gloo\"\n").string() +
                                        " --dry-run");
  EXPECT_EQ(typo.status, 1);
  EXPECT_THAT(typo.output, HasSubstr("unknown key 'backned'"));
  EXPECT_THAT(typo.output, HasSubstr("b.toml:6"));
  auto choice = moelab::test::run_command(moelab::test::runexp_binary() + " " + dir.write("c.toml", base + "[distributed]\nbackend = \"mpi\"\n").string() +
                                          " --dry-run");
  EXPECT_EQ(choice.status, 1);
  EXPECT_THAT(choice.output, HasSubstr("mpi"));
  // NCCL on a CPU model is refused before any rendezvous, naming the key.
  auto nccl = moelab::test::run_command("RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=1 " + moelab::test::runexp_binary() + " " +
                                        dir.write("d.toml", base + "[distributed]\nbackend = \"nccl\"\n").string() + " --set run_dir=" +
                                        (dir.path() / "runs").string());
  EXPECT_EQ(nccl.status, 1);
  EXPECT_THAT(nccl.output, HasSubstr("[distributed] backend = \"nccl\""));
  // A build without Gloo (pip's CUDA LibTorch) refuses it at launch, before any rendezvous, and says why.
  if (!moelab::distributed::built_with(moelab::distributed::Backend::gloo)) {
    auto gloo = moelab::test::run_command("RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=1 " + moelab::test::runexp_binary() + " " +
                                          dir.path().string() + "/a.toml --set run_dir=" + (dir.path() / "runs").string());
    EXPECT_EQ(gloo.status, 1);
    EXPECT_THAT(gloo.output, HasSubstr("has no c10d Gloo process group"));
  }
}

TEST(Distributed, TwoGlooRanksFinetuneAndEvaluateAsOneProcess) {
  SKIP_WITHOUT_GLOO();
  TempDir dir;
  // batch_size 25: the 64 questions make batches of 25, 25 and 14, split 13 + 12 and 7 + 7 over the ranks, so
  // the ranks' gradients must be weighted by their shares (a plain mean of the ranks' means would differ).
  const std::string config = std::string(MOELAB_SOURCE_DIR) + "/configs/roma_last5.toml --set model.device=cpu --set train.batch_size=25";
  auto one = run_alone(config, dir.path() / "one");
  ASSERT_EQ(one.status, 0) << one.output;
  std::vector<Rank> ranks = run_ranks(2, config + " --set run_dir=" + (dir.path() / "two").string(), dir.path());
  const fs::path a = only_run(dir.path() / "one" / "roma_last5"), b = only_run(dir.path() / "two" / "roma_last5");
  EXPECT_THAT(ranks[0].output(), HasSubstr("distributed: rank 0 of 2 (local rank 0), gloo process group"));

  // The finetuned routers.
  EXPECT_LT(max_difference(a / "train" / "routers.safetensors", b / "train" / "routers.safetensors"), 1e-5);
  // RoMA's success set (collect_routing, its batches split over the ranks and gathered): byte for byte.
  EXPECT_EQ(moelab::read_file(a / "collect" / "routing_results.json"), moelab::read_file(b / "collect" / "routing_results.json"));
  EXPECT_THAT(ranks[0].output(), HasSubstr("[collect] rank 0 of 2 runs batches 1-2 of 4"));
  // The evaluation: every question's answer from the base and the finetuned routers.
  const auto pa = nlohmann::json::parse(moelab::read_file(a / "eval" / "predictions.json"));
  const auto pb = nlohmann::json::parse(moelab::read_file(b / "eval" / "predictions.json"));
  ASSERT_EQ(pa.size(), pb.size());
  for (std::size_t i = 0; i < pa.size(); ++i) {
    EXPECT_EQ(pa[i]["id"], pb[i]["id"]) << i;
    for (const char* routers : {"base", "finetuned"}) {
      EXPECT_EQ(pa[i][routers]["letter"], pb[i][routers]["letter"]) << i << " " << routers;
      if (pa[i][routers].contains("loglik"))
        for (std::size_t c = 0; c < pa[i][routers]["loglik"].size(); ++c)
          EXPECT_NEAR(pa[i][routers]["loglik"][c].get<double>(), pb[i][routers]["loglik"][c].get<double>(), 1e-4) << i << " " << routers;
    }
  }
  const auto sa = nlohmann::json::parse(moelab::read_file(a / "summary.json"));
  const auto sb = nlohmann::json::parse(moelab::read_file(b / "summary.json"));
  EXPECT_EQ(sb["status"], "complete");
  EXPECT_EQ(sa["stages"]["eval"]["base"], sb["stages"]["eval"]["base"]);
  EXPECT_EQ(sa["stages"]["train"]["steps"], sb["stages"]["train"]["steps"]);
  // The training log's losses are the weighted means over the ranks: one process's to rounding.
  const auto& ea = sa["stages"]["train"]["epochs"];
  const auto& eb = sb["stages"]["train"]["epochs"];
  ASSERT_EQ(ea.size(), eb.size());
  for (std::size_t e = 0; e < ea.size(); ++e)
    for (const char* term : {"loss", "reg", "task"}) EXPECT_NEAR(ea[e][term].get<double>(), eb[e][term].get<double>(), 1e-4) << e << term;
  // Rank 0 alone wrote the run folder: one log, one process's metrics rows.
  EXPECT_EQ(lines_of(a / "metrics.jsonl"), lines_of(b / "metrics.jsonl"));
  EXPECT_EQ(sb["distributed"], nlohmann::json({{"world_size", 2}, {"backend", "gloo"}, {"timeout_s", 600.0}}));
  EXPECT_FALSE(sa.contains("distributed"));
  const std::string log = moelab::read_file(b / "log.txt");
  EXPECT_EQ(log.find("starting run"), log.rfind("starting run"));
  EXPECT_THAT(moelab::read_file(b / "config.resolved.toml"), testing::Not(HasSubstr("distributed")));
}

// The collect stage on 2 ranks: each runs half of the forwards and writes its own chunks; rank 0 reads
// them all in one-process order, so the exported routing and the analyzers' results equal one process's.
TEST(Distributed, TwoRanksCollectAsOneProcess) {
  SKIP_WITHOUT_GLOO();
  TempDir dir;
  const std::string data = std::string(MOELAB_SOURCE_DIR) + "/configs/data/text/";
  const std::string file = dir.write("collect.toml", "name = \"study\"\nseed = 3\nstages = [\"study\"]\n"
                                                     "[model]\npath = \"builtin:tiny-olmoe\"\ndevice = \"cpu\"\n"
                                                     "[sets.prose]\nplugin = \"text\"\npath = \"" + data + "prose.txt\"\n"
                                                     "[sets.math]\nplugin = \"text\"\npath = \"" + data + "math.txt\"\n"
                                                     "[usage]\nplugin = \"expert_usage\"\n[entropy]\nplugin = \"routing_entropy\"\n"
                                                     "[study]\nplugin = \"collect\"\nsets = [\"sets.prose\", \"sets.math\"]\n"
                                                     "analyzers = [\"usage\", \"entropy\"]\nmax_len = 32\nbatch_tokens = 64\n"
                                                     "chunk_tokens = 200\nprecision = \"float32\"\n").string();
  auto one = run_alone(file, dir.path() / "one");
  ASSERT_EQ(one.status, 0) << one.output;
  std::vector<Rank> ranks = run_ranks(2, file + " --set run_dir=" + (dir.path() / "two").string(), dir.path());
  const fs::path a = only_run(dir.path() / "one" / "study") / "study", b = only_run(dir.path() / "two" / "study") / "study";
  EXPECT_EQ(moelab::read_file(a / "routing_results.json"), moelab::read_file(b / "routing_results.json"));
  for (const char* analyzer : {"usage", "entropy"})
    EXPECT_EQ(nlohmann::json::parse(moelab::read_file(a / analyzer / "result.json")),
              nlohmann::json::parse(moelab::read_file(b / analyzer / "result.json"))) << analyzer;
  EXPECT_TRUE(fs::exists(b / "chunks" / "primary" / "chunk_r000_00000.safetensors"));
  EXPECT_TRUE(fs::exists(b / "chunks" / "primary" / "chunk_r001_00000.safetensors"));
  const auto sa = nlohmann::json::parse(moelab::read_file(a / "summary.json"));
  const auto sb = nlohmann::json::parse(moelab::read_file(b / "summary.json"));
  EXPECT_EQ(sa["collection"]["primary"]["tokens"], sb["collection"]["primary"]["tokens"]);
}

// The perplexity experiment of the tiny model on prose, 16-token windows in batches of 2; `keys`: more [ppl] keys.
std::string perplexity_experiment(const TempDir& dir, const std::string& keys) {
  return dir.write("ppl.toml", "name = \"ppl\"\nseed = 1\nstages = [\"ppl\"]\n[model]\npath = \"builtin:tiny-olmoe\"\ndevice = \"cpu\"\n"
                               "[text]\nplugin = \"text\"\npath = \"" + std::string(MOELAB_SOURCE_DIR) + "/configs/data/text/prose.txt\"\n"
                               "[ppl]\nplugin = \"perplexity\"\ndataset = \"text\"\nseqlen = 16\nbatch_size = 2\n" + keys)
      .string();
}

// Perplexity on 2 ranks: each scores half of the batches; the sums are added in one-process order.
TEST(Distributed, TwoRanksPerplexityAsOneProcess) {
  SKIP_WITHOUT_GLOO();
  TempDir dir;
  const std::string file = perplexity_experiment(dir, "");
  auto one = run_alone(file, dir.path() / "one");
  ASSERT_EQ(one.status, 0) << one.output;
  std::vector<Rank> ranks = run_ranks(2, file + " --set run_dir=" + (dir.path() / "two").string(), dir.path());
  const auto sa = nlohmann::json::parse(moelab::read_file(only_run(dir.path() / "one" / "ppl") / "summary.json"));
  const auto sb = nlohmann::json::parse(moelab::read_file(only_run(dir.path() / "two" / "ppl") / "summary.json"));
  EXPECT_GT(sa["stages"]["ppl"]["windows"].get<long long>(), 4);  // more batches than ranks
  EXPECT_EQ(sa["stages"]["ppl"]["base"], sb["stages"]["ppl"]["base"]);  // to the last bit
}

// Under torchrun the agent serves the TCPStore at MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE=True): the ranks
// join it as clients, under the attempt's key prefix, instead of binding the port themselves.
TEST(Distributed, RanksJoinTorchrunsAgentStore) {
  SKIP_WITHOUT_GLOO();
  TempDir dir;
  const std::string file = perplexity_experiment(dir, "max_windows = 8\n");
  const int port = free_port();
  c10d::TCPStoreOptions options;  // the agent's store
  options.port = static_cast<std::uint16_t>(port);
  options.isServer = true;
  options.waitWorkers = false;
  c10d::TCPStore agent("127.0.0.1", options);
  std::vector<Rank> ranks = run_ranks(2, file + " --set run_dir=" + (dir.path() / "runs").string(), dir.path(), port, /*agent_store=*/true);
  EXPECT_THAT(ranks[0].output(), HasSubstr("gloo process group"));
  // Rank 0 shared the run folder through the agent's store, under torchrun's prefix.
  ASSERT_TRUE(agent.check({"/worker/attempt_0/moelab/run_dir/0"}));
  const std::vector<uint8_t> shared = agent.get("/worker/attempt_0/moelab/run_dir/0");
  EXPECT_EQ(fs::path(std::string(shared.begin(), shared.end())), only_run(dir.path() / "runs" / "ppl"));
}

// generate on 2 ranks: each decodes every other prompt (of the length order); the texts come back in the
// dataset's order. Greedy text equals one process's; RoE's top-k change counts cover every prompt.
TEST(Distributed, TwoRanksGenerateAsOneProcess) {
  SKIP_WITHOUT_GLOO();
  TempDir dir;
  std::string rows;
  for (const char* q : {"Name a color.", "Name a planet far away from here.", "Why?", "Count to three, please.", "Say hello."})
    rows += nlohmann::json({{"id", q}, {"question", q}, {"answers", {"x"}}}).dump() + "\n";
  const fs::path data = dir.write("qa.jsonl", rows);
  const std::string file =
      dir.write("gen.toml", "name = \"gen\"\nseed = 5\nstages = [\"gen\"]\n[model]\npath = \"builtin:tiny-olmoe\"\ndevice = \"cpu\"\n"
                            "[qa]\nplugin = \"jsonl\"\npath = \"" + data.string() + "\"\ntext_field = \"question\"\n"
                            "[greedy]\nplugin = \"plain\"\n[roe]\nplugin = \"roe\"\nk = 3\nhistory = \"exact\"\ntau_mode = \"fixed\"\ntau_middle = 0.5\n"
                            "[gen]\nplugin = \"generate\"\ndataset = \"qa\"\nbaseline = \"greedy\"\nsampler = \"roe\"\nmax_new_tokens = 10\n"
                            "batch_size = 2\nstop = []\n")
          .string();
  auto one = run_alone(file, dir.path() / "one");
  ASSERT_EQ(one.status, 0) << one.output;
  std::vector<Rank> ranks = run_ranks(2, file + " --set run_dir=" + (dir.path() / "two").string(), dir.path());
  EXPECT_THAT(ranks[0].output(), HasSubstr("greedy: rank 0 of 2 decodes 3 of the 5 prompts"));
  const fs::path a = only_run(dir.path() / "one" / "gen"), b = only_run(dir.path() / "two" / "gen");
  std::istringstream la(moelab::read_file(a / "gen" / "generations.jsonl")), lb(moelab::read_file(b / "gen" / "generations.jsonl"));
  int lines = 0;
  for (std::string x, y; std::getline(la, x) && std::getline(lb, y); ++lines) {
    const auto ja = nlohmann::json::parse(x), jb = nlohmann::json::parse(y);
    EXPECT_EQ(ja["id"], jb["id"]);
    EXPECT_EQ(ja["greedy"], jb["greedy"]) << ja["id"];
    EXPECT_FALSE(jb["roe"].get<std::string>().empty()) << jb["id"];
  }
  EXPECT_EQ(lines, 5);
  const auto sa = nlohmann::json::parse(moelab::read_file(a / "summary.json"))["stages"]["gen"];
  const auto sb = nlohmann::json::parse(moelab::read_file(b / "summary.json"))["stages"]["gen"];
  EXPECT_EQ(sa["greedy"]["generated_tokens"], sb["greedy"]["generated_tokens"]);
  EXPECT_EQ(sa["roe"]["topk_change_rate"]["noisy_rows"], sb["roe"]["topk_change_rate"]["noisy_rows"]);
}

// Expert placement: each rank holds a share of every MoE layer's experts and tokens travel by all-to-all;
// the logits and router logits equal one process's within 1e-4 (fp32), on the fixture of every architecture
// and config variant, with 2 ranks (and 3, an uneven split of 8 experts).
double dumped_difference(const fs::path& a, const fs::path& b) {
  moelab::SafetensorsFile fa(a), fb(b);
  EXPECT_EQ(fa.names(), fb.names());
  double worst = 0;
  for (const auto& name : fa.names()) worst = std::max(worst, (fa.get(name) - fb.get(name)).abs().max().item<double>());
  return worst;
}

TEST(Distributed, ExpertPlacementGivesOneProcesssLogitsOnEveryArchitecture) {
  SKIP_WITHOUT_GLOO();
  const fs::path fixtures = fs::path(MOELAB_SOURCE_DIR) / "tests" / "fixtures" / "models";
  std::vector<fs::path> models;
  for (const auto& entry : fs::directory_iterator(fixtures))
    if (fs::exists(entry.path() / "config.json")) models.push_back(entry.path());
  std::sort(models.begin(), models.end());
  ASSERT_GE(models.size(), 6u);
  for (const fs::path& model : models) {
    SCOPED_TRACE(model.filename().string());
    TempDir dir;
    const std::string file = dir.write("dump.toml", "name = \"dump\"\nstages = [\"dump\"]\n[model]\npath = \"" + model.string() +
                                                        "\"\ndevice = \"cpu\"\n[dump]\nplugin = \"dump_logits\"\ninput = \"" +
                                                        (model / "expected.safetensors").string() + "\"\n").string();
    auto one = run_alone(file, dir.path() / "one");
    ASSERT_EQ(one.status, 0) << one.output;
    for (int world : {2, 3}) {
      if (world == 3 && model.filename() != "olmoe") continue;
      const fs::path runs = dir.path() / ("ep" + std::to_string(world));
      std::vector<Rank> ranks = run_ranks(world, file + " --set model.placement=experts --set run_dir=" + runs.string(), dir.path());
      EXPECT_THAT(ranks[0].output(), HasSubstr("expert parallel over " + std::to_string(world) + " ranks"));
      EXPECT_LE(dumped_difference(only_run(dir.path() / "one" / "dump") / "dump" / "logits.safetensors",
                                  only_run(runs / "dump") / "dump" / "logits.safetensors"),
                1e-4);
    }
  }
}

// Router finetuning under expert placement (gradients flow back through both all-to-alls, every rank runs
// the whole batch) gives one process's routers.
TEST(Distributed, ExpertPlacementFinetunesAsOneProcess) {
  SKIP_WITHOUT_GLOO();
  TempDir dir;
  const std::string file = dir.write("ft.toml", "name = \"ft\"\nseed = 3\nstages = [\"train\"]\n"
                                                "[model]\npath = \"builtin:tiny-olmoe\"\ndevice = \"cpu\"\n"
                                                "[data.train]\nplugin = \"jsonl\"\npath = \"" + std::string(MOELAB_SOURCE_DIR) +
                                                "/configs/data/arith_train.jsonl\"\n[task]\nplugin = \"task_ce\"\n"
                                                "[train]\nplugin = \"finetune\"\ndataset = \"data.train\"\nobjective = \"task\"\n"
                                                "last_layers = 3\nepochs = 2\nbatch_size = 8\nlr = 1e-3\nwarmup_steps = 0\ncache_hidden = false\n")
                               .string();
  auto one = run_alone(file, dir.path() / "one");
  ASSERT_EQ(one.status, 0) << one.output;
  run_ranks(2, file + " --set model.placement=experts --set run_dir=" + (dir.path() / "ep").string(), dir.path());
  const fs::path a = only_run(dir.path() / "one" / "ft") / "train" / "routers.safetensors";
  const fs::path b = only_run(dir.path() / "ep" / "ft") / "train" / "routers.safetensors";
  EXPECT_LT(max_difference(a, b), 1e-5);
}

// Router training long enough to be stopped in the middle, saving resume/ after every step.
std::string long_training(const TempDir& dir, double timeout_s) {
  return dir.write("fault.toml", "name = \"fault\"\nseed = 7\nstages = [\"train\"]\n"
                                 "[model]\npath = \"builtin:tiny-olmoe\"\ndevice = \"cpu\"\n"
                                 "[distributed]\nbackend = \"gloo\"\ntimeout_s = " + std::to_string(timeout_s) + "\n"
                                 "[data.train]\nplugin = \"jsonl\"\npath = \"" + std::string(MOELAB_SOURCE_DIR) + "/configs/data/arith_train.jsonl\"\n"
                                 "[task]\nplugin = \"task_ce\"\n"
                                 "[train]\nplugin = \"finetune\"\ndataset = \"data.train\"\nobjective = \"task\"\nlast_layers = 2\nepochs = 12\n"
                                 "batch_size = 8\nlr = 1e-3\nwarmup_steps = 0\ncheckpoint_every = 1\ncache_hidden = false\n")
      .string();
}

// Waits until the run folder's train/resume/ holds a checkpoint after step 3 or later.
bool wait_for_checkpoint(const fs::path& experiment_dir, double seconds) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < until) {
    std::error_code ec;
    if (fs::is_directory(experiment_dir, ec))
      for (const auto& run : fs::directory_iterator(experiment_dir, ec)) {
        const fs::path metrics = run.path() / "metrics.jsonl";
        if (fs::exists(run.path() / "train" / "resume" / "state.safetensors", ec) && fs::exists(metrics, ec) && lines_of(metrics) >= 3)
          return true;
      }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

void stopped_rank_stops_the_other(int signal) {
  SKIP_WITHOUT_GLOO();
  TempDir dir;
  const double timeout_s = 8;
  const std::string file = long_training(dir, timeout_s);
  const fs::path runs = dir.path() / "runs";
  std::vector<Rank> ranks = launch(2, file + " --set run_dir=" + runs.string(), dir.path());
  ASSERT_TRUE(wait_for_checkpoint(runs / "fault", 300)) << ranks[0].output() << ranks[1].output();
  ::kill(ranks[1].pid, signal);
  const auto stopped = std::chrono::steady_clock::now();
  ASSERT_TRUE(ranks[0].wait(timeout_s + 20)) << "rank 0 still runs " << timeout_s + 20 << " s after rank 1 stopped:\n" << ranks[0].output();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - stopped).count();
  ranks[1].kill_now();
  EXPECT_NE(ranks[0].status, 0) << ranks[0].output();
  EXPECT_LT(seconds, timeout_s + 10) << ranks[0].output();
  EXPECT_THAT(ranks[0].output(), HasSubstr("distributed: rank 0 of 2:"));
  EXPECT_THAT(ranks[0].output(), HasSubstr("failed: another rank stopped (died or failed) or did not answer within [distributed] timeout_s"));
  const fs::path run = only_run(runs / "fault");
  EXPECT_EQ(nlohmann::json::parse(moelab::read_file(run / "summary.json"))["status"], "failed");

  // --resume on 2 ranks continues from the last checkpoint to the routers of an uninterrupted run.
  std::vector<Rank> again = run_ranks(2, file + " --resume --set run_dir=" + runs.string(), dir.path());
  EXPECT_THAT(again[0].output(), HasSubstr("resuming from"));
  EXPECT_EQ(nlohmann::json::parse(moelab::read_file(run / "summary.json"))["status"], "complete");
  auto one = run_alone(file, dir.path() / "one");
  ASSERT_EQ(one.status, 0) << one.output;
  EXPECT_LT(max_difference(run / "train" / "routers.safetensors", only_run(dir.path() / "one" / "fault") / "train" / "routers.safetensors"), 1e-5);
}

TEST(Distributed, KilledRankStopsTheOtherWithinTheTimeoutAndResumeFinishes) { stopped_rank_stops_the_other(SIGKILL); }

TEST(Distributed, HungRankStopsTheOtherWithinTheTimeoutAndResumeFinishes) { stopped_rank_stops_the_other(SIGSTOP); }

}  // namespace
