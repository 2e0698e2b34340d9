// Typed options (moelab/options.h): every key type bound to a field, defaults, required keys, choices
// mapped to an enum, numeric ranges the host rejects with file:line, groups, and binding mistakes.
#include "moelab/lib/multiple_choice.h"
#include "moelab/options.h"
#include "test_run.h"

#include <gmock/gmock.h>

using moelab::test::error_of;
using moelab::test::TempDir;
using testing::AllOf;
using testing::HasSubstr;

namespace {

namespace fs = std::filesystem;

enum class Color { red, green, blue };

struct Everything {
  bool flag;
  long long count;
  std::size_t size;
  double ratio;
  std::string name;
  fs::path file;
  std::vector<long long> ints;
  std::vector<double> reals;
  std::vector<std::string> words;
  Color color;
  std::string method;
  std::string data, extra;
  std::vector<std::string> sets;
  moelab::PromptOptions prompt;
};

const moelab::Options<Everything>& everything() {
  static const auto o =
      moelab::Options<Everything>("everything", moelab::Kind::stage, "1.2.3", "binds one key of each type")
          .flag("flag", &Everything::flag, false, "a boolean")
          .integer("count", &Everything::count, 3, "an integer").at_least(1)
          .integer("size", &Everything::size, 7, "an unsigned integer")
          .real("ratio", &Everything::ratio, 0.5, "a share").within(0, 1)
          .string("name", &Everything::name, "anonymous", "a string")
          .path("file", &Everything::file, moelab::required, "a path")
          .integers("ints", &Everything::ints, {1, 2}, "integers").at_least(0)
          .reals("reals", &Everything::reals, {}, "numbers").positive()
          .strings("words", &Everything::words, {"a"}, "strings")
          .choice("color", &Everything::color, Color::green, {{"red", Color::red}, {"green", Color::green}, {"blue", Color::blue}},
                  "an enum")
          .choice("method", &Everything::method, "ks", {"ks", "hill"}, "a name an API takes")
          .component("data", &Everything::data, moelab::Kind::dataset, "a dataset table")
          .optional_component("extra", &Everything::extra, moelab::Kind::embedder, "an embedder table or nothing")
          .components("sets", &Everything::sets, moelab::Kind::dataset, "dataset tables")
          .include(&Everything::prompt, moelab::prompt_options());
  return o;
}

// Writes `body` as table [t] of experiment.toml (so its keys start at line 2) and checks it as the host does.
moelab::Config checked(const TempDir& dir, const std::string& body, const std::vector<moelab::ConfigKey>& keys = everything().keys()) {
  fs::path file = dir.write("experiment.toml", "[t]\n" + body);
  toml::table merged = moelab::load_experiment(file, {});
  return moelab::Config(moelab::check_table("t", *merged.get("t")->as_table(), {keys, "plugin everything", true}, file.string()));
}

TEST(Options, ReadFillsEveryFieldFromTheTable) {
  TempDir dir;
  moelab::Config config = checked(dir, "flag = true\ncount = 9\nsize = 4\nratio = 1\nname = \"x\"\nfile = \"sub/f.bin\"\n"
                                       "ints = [0, 5]\nreals = [0.25, 2]\nwords = [\"p\", \"q\"]\ncolor = \"blue\"\nmethod = \"hill\"\n"
                                       "data = \"d\"\nextra = \"e\"\nsets = [\"s1\", \"s2\"]\nmax_len = 64\nsystem = \"be brief\"\n");
  Everything v = everything().read(config);
  EXPECT_TRUE(v.flag);
  EXPECT_EQ(v.count, 9);
  EXPECT_EQ(v.size, 4u);
  EXPECT_DOUBLE_EQ(v.ratio, 1.0);  // an integer is a number
  EXPECT_EQ(v.name, "x");
  EXPECT_EQ(v.file, dir.path() / "sub" / "f.bin");  // absolute, against the file's folder
  EXPECT_EQ(v.ints, (std::vector<long long>{0, 5}));
  EXPECT_EQ(v.reals, (std::vector<double>{0.25, 2.0}));
  EXPECT_EQ(v.words, (std::vector<std::string>{"p", "q"}));
  EXPECT_EQ(v.color, Color::blue);
  EXPECT_EQ(v.method, "hill");
  EXPECT_EQ(v.data, "d");
  EXPECT_EQ(v.extra, "e");
  EXPECT_EQ(v.sets, (std::vector<std::string>{"s1", "s2"}));
  EXPECT_EQ(v.prompt.max_len, 64u);
  EXPECT_EQ(v.prompt.system, "be brief");
  // The struct holds what the validated table holds.
  EXPECT_EQ(v.count, config.get_int("count"));
  EXPECT_EQ(v.file, config.get_path("file"));
  EXPECT_EQ(v.prompt.question_template, config.get_string("question_template"));
  EXPECT_EQ(config.where("count"), (dir.path() / "experiment.toml").string() + ":3");
}

TEST(Options, UnsetKeysTakeTheirDefaults) {
  TempDir dir;
  moelab::Config config = checked(dir, "file = \"f\"\ndata = \"d\"\n");
  Everything v = everything().read(config);
  const moelab::PromptOptions prompt_defaults;
  EXPECT_FALSE(v.flag);
  EXPECT_EQ(v.count, 3);
  EXPECT_EQ(v.size, 7u);
  EXPECT_DOUBLE_EQ(v.ratio, 0.5);
  EXPECT_EQ(v.name, "anonymous");
  EXPECT_EQ(v.ints, (std::vector<long long>{1, 2}));
  EXPECT_TRUE(v.reals.empty());
  EXPECT_EQ(v.words, (std::vector<std::string>{"a"}));
  EXPECT_EQ(v.color, Color::green);
  EXPECT_EQ(v.method, "ks");
  EXPECT_EQ(v.extra, "");
  EXPECT_TRUE(v.sets.empty());
  EXPECT_EQ(v.prompt.question_template, prompt_defaults.question_template);
  EXPECT_EQ(v.prompt.max_len, prompt_defaults.max_len);
  EXPECT_EQ(config.where("count"), "default");
}

TEST(Options, RequiredKeysAndChoicesAreCheckedByTheHost) {
  TempDir dir;
  EXPECT_THAT(error_of([&] { checked(dir, "data = \"d\"\n"); }), HasSubstr("[t] needs key 'file' (path (string)): a path"));
  EXPECT_THAT(error_of([&] { checked(dir, "file = \"f\"\n"); }), HasSubstr("[t] needs key 'data' (name of a dataset table)"));
  EXPECT_THAT(error_of([&] { checked(dir, "file = \"f\"\ndata = \"d\"\ncolor = \"bleu\"\n"); }),
              AllOf(HasSubstr("experiment.toml:4: key 'color' must be one of: red, green, blue; found \"bleu\""),
                    HasSubstr("did you mean 'blue'?")));
  EXPECT_THAT(error_of([&] { checked(dir, "file = \"f\"\ndata = \"d\"\nmethod = \"mle\"\n"); }), HasSubstr("one of: ks, hill"));
  EXPECT_THAT(error_of([&] { checked(dir, "file = \"f\"\ndata = \"d\"\ncount = \"3\"\n"); }),
              HasSubstr("experiment.toml:4: key 'count' must be integer (at least 1), found string \"3\""));
  EXPECT_THAT(error_of([&] { checked(dir, "file = \"f\"\ndata = \"d\"\nsets = \"s\"\n"); }),
              HasSubstr("key 'sets' must be array of names of dataset tables"));
  EXPECT_THAT(error_of([&] { checked(dir, "file = \"f\"\ndata = \"d\"\nmax_lenn = 3\n"); }),
              AllOf(HasSubstr("experiment.toml:4: unknown key 'max_lenn' in [t] (did you mean 'max_len'?)"),
                    HasSubstr("(plugin everything accepts: flag, count, size, ratio, name, file, ints, reals, words, color, method, data, "
                              "extra, sets, question_template, choice_template, chat_template, system, max_len)")));
}

TEST(Options, ValuesOutsideTheirRangeNameFileLineKeyValueAndRange) {
  TempDir dir;
  const std::string base = "file = \"f\"\ndata = \"d\"\n";  // lines 2 and 3; the key under test is on line 4
  auto error = [&](const std::string& line) { return error_of([&] { checked(dir, base + line + "\n"); }); };
  EXPECT_THAT(error("count = 0"), HasSubstr("experiment.toml:4: key 'count' must be at least 1, found integer 0"));
  EXPECT_THAT(error("ratio = 1.5"), HasSubstr("experiment.toml:4: key 'ratio' must be within [0, 1], found number 1.5"));
  EXPECT_THAT(error("size = -1"), HasSubstr("experiment.toml:4: key 'size' must be at least 0, found integer -1"));
  EXPECT_THAT(error("ints = [3, -2]"), HasSubstr("experiment.toml:4: key 'ints' must be an array of numbers at least 0, found integer -2"));
  EXPECT_THAT(error("reals = [1.0, 0.0]"), HasSubstr("key 'reals' must be an array of numbers greater than 0, found number 0"));
  EXPECT_THAT(error("max_len = 0"), HasSubstr("experiment.toml:4: key 'max_len' must be at least 1, found integer 0"));
  EXPECT_NO_THROW(checked(dir, base + "count = 1\nratio = 0\nsize = 0\nints = []\nreals = [1e-9]\n"));
}

TEST(Options, OutOfRangeDefaultsAreReportedAsDefaults) {
  struct One {
    long long n;
  };
  auto bad = moelab::Options<One>().integer("n", &One::n, 0, "a count").at_least(1);
  TempDir dir;
  EXPECT_THAT(error_of([&] { checked(dir, "", bad.keys()); }), HasSubstr("default: key 'n' must be at least 1, found integer 0"));
}

TEST(Options, DescriptorCarriesIdentityKeysChoicesAndRanges) {
  moelab::Descriptor d = moelab::descriptor_of(everything());
  EXPECT_EQ(d.name, "everything");
  EXPECT_EQ(d.kind, moelab::Kind::stage);
  EXPECT_EQ(d.version, "1.2.3");
  ASSERT_EQ(d.keys.size(), everything().keys().size());
  auto key = [&](const std::string& name) {
    for (const auto& k : d.keys)
      if (k.name == name) return k;
    ADD_FAILURE() << "no key " << name;
    return moelab::ConfigKey{};
  };
  EXPECT_EQ(key("count").type, moelab::KeyType::integer);
  EXPECT_EQ(key("count").default_toml, "3");
  EXPECT_EQ(key("count").range.text(), "at least 1");
  EXPECT_EQ(key("size").range.text(), "at least 0");  // unsigned field
  EXPECT_EQ(key("ratio").default_toml, "0.5");
  EXPECT_EQ(key("reals").range.text(), "greater than 0");
  EXPECT_EQ(key("file").default_toml, "");  // required
  EXPECT_EQ(key("color").choices, (std::vector<std::string>{"red", "green", "blue"}));
  EXPECT_EQ(key("color").default_toml, "\"green\"");
  EXPECT_EQ(key("sets").type, moelab::KeyType::component_list);
  EXPECT_EQ(key("sets").choices, (std::vector<std::string>{"dataset"}));
  EXPECT_EQ(key("extra").default_toml, "\"\"");
  EXPECT_THAT(error_of([] { moelab::Options<Everything>().descriptor(); }), HasSubstr("no descriptor"));
}

TEST(Options, ChoiceNamesMapBack) {
  const std::vector<std::pair<std::string, Color>> names = {{"red", Color::red}, {"blue", Color::blue}};
  EXPECT_EQ(moelab::choice_name(Color::blue, names), "blue");
  EXPECT_THAT(error_of([&] { moelab::choice_name(Color::green, names); }), HasSubstr("not in the table"));
}

TEST(Options, BindingMistakesAreLogicErrorsNamingThePlugin) {
  struct Two {
    long long a;
    std::string s;
    Color c;
  };
  using O = moelab::Options<Two>;
  EXPECT_THAT(error_of([] { O("p", moelab::Kind::stage, "1", "").integer("a", &Two::a, 1, "").integer("a", &Two::a, 1, ""); }),
              HasSubstr("plugin p declares key 'a' twice"));
  EXPECT_THAT(error_of([] { O().string("plugin", &Two::s, "", ""); }), HasSubstr("'plugin' is reserved"));
  EXPECT_THAT(error_of([] { O().string("s", &Two::s, "", "").at_least(1); }), HasSubstr("key 's' is not a number"));
  EXPECT_THAT(error_of([] { O().at_most(1); }), HasSubstr("needs a number key"));
  EXPECT_THAT(error_of([] { O().choice("c", &Two::c, Color::red, {{"green", Color::green}}, ""); }),
              HasSubstr("the default of choice key 'c' has no name"));
}

}  // namespace
