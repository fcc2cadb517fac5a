import re,glob,collections,statistics,sys
vals=collections.defaultdict(list); F=collections.defaultdict(list)
for d in sys.argv[1:]:
    for f in sorted(glob.glob(d+'/*.log')):
        v=f.split('/')[-1].rsplit('-',1)[0]
        t=open(f).read()
        m=re.search(r'class wired .*?ours ([0-9.]+) s',t)
        s=re.search(r' ([0-9.]+)F ',t)
        if m: vals[(d.split('/')[-1],v)].append(float(m.group(1)))
        if s: F[(d.split('/')[-1],v)].append(float(s.group(1)))
allv=collections.defaultdict(list)
for k in sorted(vals):
    x=vals[k]; allv[k[1]]+=x
    print(k, len(x), 'median %.2f'%statistics.median(x), 'range %.2f-%.2f'%(min(x),max(x)), 'F %.3f-%.3f'%(min(F[k]),max(F[k])))
for v,x in allv.items():
    print('ALL',v,len(x),'median %.3f'%statistics.median(x),'range %.2f-%.2f'%(min(x),max(x)), 'ratio %.3f'%(statistics.median(x)/5.85))
