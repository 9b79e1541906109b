// Writes the seed corpora of the fuzz harnesses (tests/fuzz/corpus/<harness>/):
// well-formed inputs for every parser, from which the fuzzer mutates.
//   ecopt_fuzz_seeds OUTPUT_DIR
// The corpora in the repository were made with it; run it again when a wire
// or file format changes.
#include <zlib.h>

#include <cctype>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "ecopt/checkpoint.hpp"
#include "ecopt/compressors/all.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/transports/detail/tcp_wire.hpp"

namespace fs = std::filesystem;
namespace wire = ecopt::detail::tcp_wire;
using bytes = std::vector<std::byte>;

namespace {

fs::path out_dir;

void write_seed(const std::string& harness, const std::string& name, const bytes& data) {
  const fs::path dir = out_dir / harness;
  fs::create_directories(dir);
  std::ofstream f(dir / name, std::ios::binary);
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

bytes text_bytes(std::string_view s) {
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  return {p, p + s.size()};
}

bytes cat(bytes a, const bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// decode_add: [table index, dim index, ratio index, seed, round, rank, summed] + payload,
// with the table and index lists of decode_add_fuzzer.cpp.
constexpr std::size_t dim_choices[] = {1, 2, 3, 5, 8, 16, 31, 64, 100, 257, 1024, 4099};

template <class C, class T>
void compressor_seed(std::size_t table_index, std::size_t dim_index) {
  const std::size_t dim = dim_choices[dim_index];
  const C c{};  // ratio index 0 is the default 0.01 of the sparsifiers
  const ecopt::round_context ctx{.seed = 7, .round = 3, .rank = 1, .world = 4};
  try {
    auto state = c.template make_state<T>(dim);
    auto rng = ecopt::counter_rng::stream(1, ecopt::stream_purpose::test, 0, dim);
    std::vector<T> x(dim);
    for (T& v : x) v = static_cast<T>(rng.normal());
    bytes payload;
    ecopt::bit_writer w(payload);
    c.encode(std::span<const T>(x), state, w, ctx);
    w.finish();
    const bytes control = {std::byte(table_index), std::byte(dim_index), std::byte{0}, std::byte{7},
                           std::byte{3},           std::byte{1},         std::byte{0}};
    std::string name = std::to_string(table_index) + "_" + std::string(C::name);
    for (char& ch : name) {
      if (std::isalnum(static_cast<unsigned char>(ch)) == 0) ch = '_';
    }
    write_seed("decode_add", name + "_" + std::to_string(dim), cat(control, payload));
  } catch (const ecopt::error&) {
    // a compressor that needs more than one rank to encode (or this dim): no seed
  }
}

template <std::size_t... I>
void compressor_seeds(std::index_sequence<I...>) {
  using all = ecopt::all_compressors;
  constexpr std::size_t n = sizeof...(I);
  for (const std::size_t dim_index : {std::size_t{3}, std::size_t{8}}) {
    (compressor_seed<std::tuple_element_t<I, all>, float>(I, dim_index), ...);
    (compressor_seed<std::tuple_element_t<I, all>, double>(n + I, dim_index), ...);
  }
}

void frame_seeds() {
  const bytes payload = text_bytes("a payload of some bytes");
  int k = 0;
  for (const auto kind : {wire::frame_kind::data, wire::frame_kind::hello, wire::frame_kind::abort,
                          wire::frame_kind::reject}) {
    for (const bool checksum : {true, false}) {
      if (!checksum && kind != wire::frame_kind::data) continue;
      const wire::header_bytes h = wire::make_header(kind, 2, 17, payload, checksum);
      // control: max length 2^20, checksums as they are
      write_seed("tcp_frame", "frame" + std::to_string(k++),
                 cat(cat({std::byte{20}, std::byte{0}}, bytes(h.begin(), h.end())), payload));
    }
  }
}

void handshake_seeds() {
  write_seed("tcp_handshake", "hello",
             cat({std::byte{0}, std::byte{0}}, wire::encode_hello({.rank = 2, .nonce = {}})));
  write_seed("tcp_handshake", "challenge",
             cat({std::byte{4}, std::byte{0}}, wire::encode_challenge(wire::challenge_payload{})));
  write_seed("tcp_handshake", "proof",
             cat({std::byte{5}, std::byte{0}},
                 wire::encode_proof(
                     {.proof = {}, .world_size = 4, .listen_port = 4000, .host = "10.0.0.2"})));
  const std::vector<wire::peer_address> table = {
      {"127.0.0.1", 4000}, {"host-b", 4001}, {"::1", 4002}};
  write_seed("tcp_handshake", "directory",
             cat({std::byte{1}, std::byte{2}}, wire::encode_directory(table)));
  write_seed("tcp_handshake", "host_port",
             cat({std::byte{2}, std::byte{0}}, text_bytes("[::1]:29500")));
  write_seed("tcp_handshake", "text",
             cat({std::byte{3}, std::byte{0}}, text_bytes("rank 1 failed:\n\x1b[2J \\ done")));
}

void checkpoint_seeds() {
  ecopt::checkpoint c;
  c.put("step", std::uint64_t{42});
  const std::vector<float> memory = {1.5F, -2.0F, 0.25F};
  c.put("exchange/memory", std::span<const float>(memory));
  c.put("seed", std::int32_t{-7});
  c.put_text("compressor", "top_k");
  std::ostringstream out;
  c.write(out);
  write_seed("checkpoint", "records", text_bytes(out.str()));
}

bytes gzip(const bytes& data) {
  uLongf size = compressBound(static_cast<uLong>(data.size())) + 32;
  bytes out(size);
  z_stream z{};
  deflateInit2(&z, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);  // gzip
  z.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

void idx_seeds() {
  const auto idx = [](std::uint8_t type, std::vector<std::uint32_t> dims, std::size_t element) {
    bytes out = {std::byte{0}, std::byte{0}, std::byte{type}, std::byte(dims.size())};
    std::size_t n = 1;
    for (const std::uint32_t d : dims) {
      for (int shift = 24; shift >= 0; shift -= 8) out.push_back(std::byte((d >> shift) & 0xFF));
      n *= d;
    }
    for (std::size_t i = 0; i < n * element; ++i) out.push_back(std::byte((i * 37) & 0xFF));
    return out;
  };
  // first byte: the reader (0 read_idx, 1 load_idx_images, 2 load_idx_labels)
  const auto seed = [](const char* name, std::uint8_t reader, const bytes& file) {
    write_seed("idx", name, cat({std::byte{reader}}, file));
  };
  const bytes images = idx(0x08, {3, 4, 4}, 1);
  seed("images_u8", 1, images);
  seed("images_u8.gz", 1, gzip(images));
  seed("raw_u8", 0, images);
  seed("labels_u8", 2, idx(0x08, {5}, 1));
  seed("labels_i32.gz", 2, gzip(idx(0x0C, {3}, 4)));
  seed("images_f32", 1, idx(0x0D, {2, 3}, 4));
  seed("raw_f64", 0, idx(0x0E, {2, 2}, 8));
  seed("images_i16", 1, idx(0x0B, {2, 2, 2}, 2));
}

void libsvm_seeds() {
  write_seed("libsvm", "sample",
             cat({std::byte{0}}, text_bytes("# comment\n+1 1:0.5 3:-2 # trailing\n\n"
                                            "-1\tqid:7 2:1e-3\t4:+.25\r\n2.5 1:-1.5e+2 4:5\n0\n")));
  write_seed("libsvm", "float_dim8", cat({std::byte{0x43}}, text_bytes("1 1:1 8:2\n-1 2:3.5\n")));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: ecopt_fuzz_seeds OUTPUT_DIR\n");
    return 2;
  }
  out_dir = argv[1];
  compressor_seeds(std::make_index_sequence<std::tuple_size_v<ecopt::all_compressors>>{});
  frame_seeds();
  handshake_seeds();
  checkpoint_seeds();
  idx_seeds();
  libsvm_seeds();
  return 0;
}
