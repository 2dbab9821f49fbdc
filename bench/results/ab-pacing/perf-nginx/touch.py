import mmap, time
N=2*1024**3
def touch():
    m=mmap.mmap(-1,N,flags=mmap.MAP_PRIVATE|mmap.MAP_ANONYMOUS)
    t=time.perf_counter()
    for off in range(0,N,4096):
        m[off]=1
    dt=time.perf_counter()-t
    m.close()
    return dt
print("first          %.2f s" % touch())
print("again at once  %.2f s" % touch())
time.sleep(8)
print("after 8 s idle %.2f s" % touch())
print("again at once  %.2f s" % touch())
