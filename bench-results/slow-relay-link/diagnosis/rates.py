import csv,collections,sys
rows=list(csv.DictReader(open(sys.argv[1])))
step=float(sys.argv[2]) if len(sys.argv)>2 else 0.5
series=collections.defaultdict(list)
for r in rows:
    if r['from']=='index' or r['to']=='index': continue
    series[(r['to'],r['from'])].append((float(r['t_s']),int(r['bytes'])))
def at(k,t):
    v=0
    for tt,b in series[k]:
        if tt<=t: v=b
        else: break
    return v
nodes=sorted({k[0] for k in series}|{k[1] for k in series})
T=max(t for s in series.values() for t,_ in s)
print('Mbit/s per',step,'s: down(to) for each host; up(from) for seeder and wifi total')
t=0
while t<min(T,9):
    line=[]
    for n in nodes:
        if 'wifi' in n: continue
        d=sum(at(k,t+step)-at(k,t) for k in series if k[0]==n)*8/step/1e6
        line.append(f"{n.split('/')[0]}↓{d:5.1f}")
    su=sum(at(k,t+step)-at(k,t) for k in series if k[1]=='seeder')*8/step/1e6
    s2w=sum(at(k,t+step)-at(k,t) for k in series if k[1]=='seeder' and 'wifi' in k[0])*8/step/1e6
    wu=sum(at(k,t+step)-at(k,t) for k in series if 'wifi' in k[1] and 'wired' in k[0])*8/step/1e6
    wiredup=sum(at(k,t+step)-at(k,t) for k in series if 'wired' in k[1])*8/step/1e6
    print(f"{t:4.1f} seed↑{su:5.1f} (to wifi {s2w:4.1f}) wifi→wired {wu:4.1f} wired↑{wiredup:5.1f} |", ' '.join(line))
    t+=step
