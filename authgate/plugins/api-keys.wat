;; api-keys: allow a request whose `X-API-Key` header is one of `config.keys`.
;; Config: {"keys": ["key-1", "key-2"]}. Otherwise 401 "missing or unknown API key".
;; ABI v1, no imports. Shipped as WAT; authgate compiles it at load.
(module
  (memory (export "memory") 2)
  (data (i32.const 16) "\nheader.x-api-key\t") ;; $hdr: 18 bytes
  (data (i32.const 42) "\nconfig.keys\t") ;; $keys: 13 bytes
  (data (i32.const 63) "{\"allow\":true}") ;; $allow: 14 bytes
  (data (i32.const 85) "{\"allow\":false,\"status\":401,\"body\":\"missing or unknown API key\"}") ;; $deny: 64 bytes

  ;; ABI v1 (see PLUGINS.md): the request text lands at 1024; ap_alloc remembers its length.
  (global $inlen (mut i32) (i32.const 0))
  (global $vlen (mut i32) (i32.const 0))
  (func (export "ap_abi_version") (result i32) (i32.const 1))
  (func (export "ap_alloc") (param $len i32) (result i32)
    (global.set $inlen (local.get $len))
    (i32.const 1024))
  ;; $n bytes at $a equal $n bytes at $b?
  (func $eq (param $a i32) (param $b i32) (param $n i32) (result i32)
    (block $no
      (loop $l
        (if (i32.eqz (local.get $n)) (then (return (i32.const 1))))
        (br_if $no (i32.ne (i32.load8_u (local.get $a)) (i32.load8_u (local.get $b))))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $l)))
    (i32.const 0))
  ;; The value of the line whose "\nkey\t" is at $k ($klen bytes): its address, or -1;
  ;; its length goes to $vlen.
  (func $find (param $k i32) (param $klen i32) (result i32)
    (local $i i32) (local $end i32) (local $v i32) (local $stop i32)
    (local.set $stop (i32.add (i32.const 1024) (global.get $inlen)))
    (local.set $i (i32.const 1024))
    (local.set $end (i32.sub (local.get $stop) (local.get $klen)))
    (block $notfound
      (loop $scan
        (br_if $notfound (i32.gt_s (local.get $i) (local.get $end)))
        (if (call $eq (local.get $i) (local.get $k) (local.get $klen))
          (then
            (local.set $v (i32.add (local.get $i) (local.get $klen)))
            (local.set $i (local.get $v))
            (block $eol
              (loop $l
                (br_if $eol (i32.ge_u (local.get $i) (local.get $stop)))
                (br_if $eol (i32.eq (i32.load8_u (local.get $i)) (i32.const 10)))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br $l)))
            (global.set $vlen (i32.sub (local.get $i) (local.get $v)))
            (return (local.get $v))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
    (i32.const -1))
  ;; Is the $n bytes at $x one of the comma-separated entries at $list ($llen bytes)?
  (func $member (param $x i32) (param $n i32) (param $list i32) (param $llen i32) (result i32)
    (local $i i32) (local $start i32) (local $end i32)
    (local.set $start (local.get $list))
    (local.set $i (local.get $list))
    (local.set $end (i32.add (local.get $list) (local.get $llen)))
    (loop $l
      (if (i32.or (i32.ge_u (local.get $i) (local.get $end))
                  (i32.eq (i32.load8_u (local.get $i)) (i32.const 44)))
        (then
          (if (i32.eq (i32.sub (local.get $i) (local.get $start)) (local.get $n))
            (then (if (call $eq (local.get $start) (local.get $x) (local.get $n))
              (then (return (i32.const 1))))))
          (if (i32.ge_u (local.get $i) (local.get $end)) (then (return (i32.const 0))))
          (local.set $start (i32.add (local.get $i) (i32.const 1)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l))
    (i32.const 0))
  ;; Decimal digits at $p ($n bytes) → number, or -1.
  (func $atoi (param $p i32) (param $n i32) (result i32)
    (local $v i32) (local $c i32)
    (if (i32.or (i32.eqz (local.get $n)) (i32.gt_u (local.get $n) (i32.const 9)))
      (then (return (i32.const -1))))
    (loop $l
      (local.set $c (i32.sub (i32.load8_u (local.get $p)) (i32.const 48)))
      (if (i32.gt_u (local.get $c) (i32.const 9)) (then (return (i32.const -1))))
      (local.set $v (i32.add (i32.mul (local.get $v) (i32.const 10)) (local.get $c)))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l (local.get $n)))
    (local.get $v))
  (func $ret (param $p i32) (param $n i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (local.get $n))))

  (func (export "ap_decide") (param $p i32) (param $n i32) (result i64)
    (local $key i32) (local $klen i32) (local $list i32)
    (local.set $key (call $find (i32.const 16) (i32.const 18)))
    (local.set $klen (global.get $vlen))
    (if (i32.or (i32.lt_s (local.get $key) (i32.const 0)) (i32.eqz (local.get $klen)))
      (then (return (call $ret (i32.const 85) (i32.const 64)))))
    (local.set $list (call $find (i32.const 42) (i32.const 13)))
    (if (i32.lt_s (local.get $list) (i32.const 0))
      (then (return (call $ret (i32.const 85) (i32.const 64)))))
    (if (call $member (local.get $key) (local.get $klen) (local.get $list) (global.get $vlen))
      (then (return (call $ret (i32.const 63) (i32.const 14)))))
    (call $ret (i32.const 85) (i32.const 64)))
)
