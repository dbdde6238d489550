// Kernel index for Jittor's CPU kernels (built and loaded by utils/kernel_compile.py).
//
// Jittor keeps compiled kernels on disk, but every new process still generates
// each kernel's full C++ source (macro expansion, IR passes, tuners) before it
// finds out that the library is already there: ~20-40 ms per kernel, several
// seconds for the first training step of a model. This hook records, for each
// key Jittor looks a kernel up by, the library and symbol the compile produced,
// and later opens that library directly. An entry is used only when its key is
// byte-identical, the compiler flags are unchanged and the library file is the
// one recorded (size and modification time); anything else goes through
// Jittor's own compile path. Kernels that leave state in their fused op
// (tuners relaying part of the op to oneDNN) are never recorded.
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>

#include "fused_op.h"
#include "jit_key.h"

namespace jittor {
extern jit_op_entry_t (*do_compile_hook)(Op*);
jit_op_entry_t do_compile_inner(Op* op);
extern std::string cc_flags;
namespace jit_compiler {
jit_op_entry_t load_jit_lib(std::string name, std::string symbol_name, const std::string& extra_flags);
}
}  // namespace jittor

namespace {

using jittor::Op;
using jittor::jit_op_entry_t;

const char kMagic[] = "dformer-kernel-index 1";
std::string g_folder;
long g_hits = 0, g_misses = 0;

std::string flags_digest() {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%016zx", std::hash<std::string>()(jittor::cc_flags));
    return buf;
}

std::string entry_path(const std::string& key) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "/%016zx_%zu", std::hash<std::string>()(key), key.size());
    return g_folder + buf;
}

bool file_stamp(const std::string& path, std::string* stamp) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0) return false;
    *stamp = std::to_string((long long)st.st_size) + " " + std::to_string((long long)st.st_mtim.tv_sec)
        + "." + std::to_string((long long)st.st_mtim.tv_nsec);
    return true;
}

jit_op_entry_t lookup(const std::string& key) {
    std::ifstream in(entry_path(key), std::ios::binary);
    if (!in) return nullptr;
    std::string magic, flags, lib, symbol, stamp, now;
    if (!std::getline(in, magic) || !std::getline(in, flags) || !std::getline(in, lib)
        || !std::getline(in, symbol) || !std::getline(in, stamp))
        return nullptr;
    std::string stored((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (magic != kMagic || flags != flags_digest() || stored != key) return nullptr;
    if (!file_stamp(lib, &now) || now != stamp) return nullptr;
    return jittor::jit_compiler::load_jit_lib(lib, symbol, "");
}

bool leaves_state(Op* op) {
    if (std::string(op->name()) != "fused") return false;
    auto* fop = (jittor::FusedOp*)op;
    return fop->context && !fop->context->vrm.relay_groups.empty();
}

void record(const std::string& key, Op* op, jit_op_entry_t entry) {
    Dl_info info;
    if (!entry || leaves_state(op) || !dladdr((void*)entry, &info) || !info.dli_fname
        || !info.dli_sname)
        return;
    std::string lib = info.dli_fname, stamp, command;
    if (!file_stamp(lib, &stamp)) return;
    std::ifstream key_file(lib + ".key");       // Jittor's record of the compile command
    if (!std::getline(key_file, command) || command.find("GLOBAL_VAR") != std::string::npos)
        return;                                  // opened with global symbols: leave to Jittor
    std::string tmp = g_folder + "/.tmp-XXXXXX";
    int fd = mkstemp(&tmp[0]);
    if (fd < 0) return;
    std::string text = std::string(kMagic) + "\n" + flags_digest() + "\n" + lib + "\n"
        + info.dli_sname + "\n" + stamp + "\n" + key;
    bool ok = write(fd, text.data(), text.size()) == (ssize_t)text.size();
    ok = (close(fd) == 0) && ok;
    if (!ok || std::rename(tmp.c_str(), entry_path(key).c_str()) != 0) unlink(tmp.c_str());
}

jit_op_entry_t compile_or_open(Op* op) {
    auto& jk = jittor::get_jk();                 // the key the caller looked the op up by
    std::string key(jk.to_cstring(), jk.size);
    if (jit_op_entry_t entry = lookup(key)) {
        ++g_hits;
        return entry;
    }
    ++g_misses;
    jit_op_entry_t entry = jittor::do_compile_inner(op);
    record(key, op, entry);
    return entry;
}

}  // namespace

extern "C" int dformer_kernel_index_install(const char* folder) {
    g_folder = folder;
    jittor::do_compile_hook = compile_or_open;
    return 1;
}

extern "C" void dformer_kernel_index_uninstall() { jittor::do_compile_hook = nullptr; }

extern "C" long dformer_kernel_index_hits() { return g_hits; }

extern "C" long dformer_kernel_index_misses() { return g_misses; }
