import SBXJSON
