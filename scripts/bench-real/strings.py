words = [f"word{i % 97}-{i}" for i in range(20000)]
text = " ".join(words)
upper = text.upper().replace("WORD", "w")
counts = {}
for w in upper.split():
    key = w.split("-")[0]
    counts[key] = counts.get(key, 0) + 1
print(len(upper), len(counts), sorted(counts.items())[:2])
