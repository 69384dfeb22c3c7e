import json
data = {f"key{i}": [i, str(i), {"v": i * 1.5, "ok": i % 2 == 0}] for i in range(3000)}
text = json.dumps(data, sort_keys=True)
back = json.loads(text)
print(len(text), len(back))
