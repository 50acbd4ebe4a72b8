# The mutation loop of issue 17: each digit of a model file's header changed once at random,
# then `patchcore predict` on one image; prints every edit whose exit code is neither 0 nor 3,
# then the count of each exit code. Usage: mutate_header.py MODEL IMAGE PATCHCORE [MAX_EDITS]
import os, random, shutil, struct, subprocess, sys, tempfile
model, image, binary = sys.argv[1], sys.argv[2], sys.argv[3]
limit = int(sys.argv[4]) if len(sys.argv) > 4 else 10**9
b = open(model, 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
h = bytearray(b[8:8+n])
rng = random.Random(1)
positions = [i for i, c in enumerate(h) if chr(c).isdigit()]
rng.shuffle(positions)
codes = {}
work = tempfile.mkdtemp()
for i in positions[:limit]:
    old = h[i]
    new = ord(rng.choice([d for d in '0123456789' if ord(d) != old]))
    m = bytearray(h); m[i] = new
    path = os.path.join(work, 'm.patchcore')
    open(path, 'wb').write(b[:8] + bytes(m) + b[8+n:])
    r = subprocess.run([binary, 'predict', '--model', path, '--threads', '1', image], capture_output=True, text=True)
    codes[r.returncode] = codes.get(r.returncode, 0) + 1
    if r.returncode not in (0, 3):
        ctx = bytes(h[max(0,i-30):i+10]).decode(errors='replace')
        print(f'pos {i} {chr(old)}->{chr(new)} rc={r.returncode} ctx={ctx!r} err={r.stderr.strip()[-200:]!r}', flush=True)
shutil.rmtree(work)
print('exit codes:', codes, flush=True)
